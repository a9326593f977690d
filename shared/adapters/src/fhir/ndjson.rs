//! Splits a byte stream into NDJSON lines with a bounded buffer: memory
//! holds one line and one network chunk, whatever the file's size.

use futures::stream::{BoxStream, Stream, StreamExt};

/// Longest line kept; a longer one is skipped and reported as too long.
pub const MAX_LINE_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// One non-empty line, without its line ending.
    Text(Vec<u8>),
    /// A line longer than [`MAX_LINE_BYTES`], dropped.
    TooLong,
}

/// Lines out of a byte stream whose errors are of type `E`.
pub struct LineSplitter<E> {
    source: BoxStream<'static, Result<bytes::Bytes, E>>,
    buffer: Vec<u8>,
    /// Set while skipping the rest of an over-long line.
    skipping: bool,
    pending: std::collections::VecDeque<Line>,
    done: bool,
    max_line: usize,
}

impl<E: Send + 'static> LineSplitter<E> {
    pub fn new(
        source: impl Stream<Item = Result<bytes::Bytes, E>> + Send + 'static,
        max_line: usize,
    ) -> Self {
        Self {
            source: source.boxed(),
            buffer: Vec::new(),
            skipping: false,
            pending: std::collections::VecDeque::new(),
            done: false,
            max_line,
        }
    }

    /// The next line; `None` at the end, `Some(Err)` when the source fails.
    pub async fn next_line(&mut self) -> Option<Result<Line, E>> {
        loop {
            if let Some(line) = self.pending.pop_front() {
                return Some(Ok(line));
            }
            if self.done {
                return None;
            }
            match self.source.next().await {
                Some(Ok(chunk)) => self.push(&chunk),
                Some(Err(error)) => {
                    self.done = true;
                    return Some(Err(error));
                }
                None => {
                    self.done = true;
                    if !self.skipping {
                        let rest = std::mem::take(&mut self.buffer);
                        self.emit(rest);
                    }
                }
            }
        }
    }

    fn push(&mut self, mut chunk: &[u8]) {
        while let Some(end) = chunk.iter().position(|b| *b == b'\n') {
            if self.skipping {
                self.skipping = false;
            } else {
                self.buffer.extend_from_slice(&chunk[..end]);
                let line = std::mem::take(&mut self.buffer);
                self.emit(line);
            }
            chunk = &chunk[end + 1..];
        }
        if self.skipping {
            return;
        }
        self.buffer.extend_from_slice(chunk);
        if self.buffer.len() > self.max_line {
            self.buffer = Vec::new();
            self.skipping = true;
            self.pending.push_back(Line::TooLong);
        }
    }

    fn emit(&mut self, mut line: Vec<u8>) {
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        if line.len() > self.max_line {
            self.pending.push_back(Line::TooLong);
        } else if line.iter().any(|b| !b.is_ascii_whitespace()) {
            self.pending.push_back(Line::Text(line));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines(chunks: &[&str], max: usize) -> Vec<Line> {
        let owned: Vec<Result<bytes::Bytes, ()>> = chunks
            .iter()
            .map(|c| Ok(bytes::Bytes::from(c.to_string())))
            .collect();
        let mut splitter = LineSplitter::new(futures::stream::iter(owned), max);
        let mut out = Vec::new();
        while let Some(line) = splitter.next_line().await {
            out.push(line.unwrap());
        }
        out
    }

    fn text(s: &str) -> Line {
        Line::Text(s.as_bytes().to_vec())
    }

    #[tokio::test]
    async fn splits_across_chunks_and_skips_blank_lines() {
        assert_eq!(
            lines(&["{\"a\"", ":1}\n{\"b\":2}\r\n\n", "{\"c\"", ":3}"], 100).await,
            vec![text("{\"a\":1}"), text("{\"b\":2}"), text("{\"c\":3}")]
        );
    }

    #[tokio::test]
    async fn an_overlong_line_is_reported_and_skipped_without_buffering_it() {
        let long = "x".repeat(50);
        assert_eq!(
            lines(&["ok\n", &long, &long, "\nafter\n", &long, "\n"], 20).await,
            vec![text("ok"), Line::TooLong, text("after"), Line::TooLong]
        );
    }

    #[tokio::test]
    async fn a_source_error_ends_the_lines() {
        let source =
            futures::stream::iter(vec![Ok(bytes::Bytes::from_static(b"a\nb")), Err("reset")]);
        let mut splitter = LineSplitter::new(source, 100);
        assert_eq!(splitter.next_line().await, Some(Ok(text("a"))));
        assert_eq!(splitter.next_line().await, Some(Err("reset")));
        assert_eq!(splitter.next_line().await, None);
    }
}
