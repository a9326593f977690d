//! Simulators: GP estate and SMS/email/letter gateway.
