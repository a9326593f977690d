//! Who may do what: hub roles from the caller's IAM identity, and the
//! person behind it (for four eyes).
//!
//! Roles come from configuration ([`AccessPolicy`]) matching the caller's
//! IAM role name (an IAM Identity Center permission set's role,
//! `AWSReservedSSO_<PermissionSet>_<hash>`) or IAM user. The *person* is
//! the IAM user, or for an Identity Center role the session name, which
//! Identity Center sets to the user's name (the caller cannot choose it).
//! Any other assumed-role session names itself, so it is not accepted as a
//! person for a decision.

use super::StaffId;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A hub role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Creates campaigns, asks for deadline changes, cancels.
    Requester,
    /// The second person on a campaign and its deadline changes.
    Approver,
    /// Changes the practice registry (a second registry admin approves).
    RegistryAdmin,
    /// Reads campaigns, reports, audit and evidence.
    Auditor,
}

impl Role {
    pub const ALL: [Role; 4] = [
        Role::Requester,
        Role::Approver,
        Role::RegistryAdmin,
        Role::Auditor,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requester => "requester",
            Self::Approver => "approver",
            Self::RegistryAdmin => "registry_admin",
            Self::Auditor => "auditor",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == raw.trim())
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The role prefix IAM Identity Center gives its permission sets' roles.
const IDENTITY_CENTER_ROLE: &str = "AWSReservedSSO_";

/// The caller's IAM principal, as API Gateway (or `hub local serve`) gives
/// it, read into what roles and four eyes need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The authenticated identity exactly as given (an ARN on AWS).
    pub identity: String,
    /// Names a rule may match: the identity, `user/NAME` for an IAM user,
    /// the role name for an assumed role.
    names: Vec<String>,
    /// The person, if the identity names one the caller cannot choose.
    pub person: Option<StaffId>,
}

impl Principal {
    pub fn parse(identity: &str) -> Self {
        let identity = identity.trim().to_string();
        let mut names = vec![identity.clone()];
        let mut person = None;
        let fields: Vec<&str> = identity.splitn(6, ':').collect();
        if let ["arn", _, service, _, account, resource] = fields.as_slice() {
            let path: Vec<&str> = resource.split('/').collect();
            match (*service, path.first().copied()) {
                ("iam", Some("user")) if path.len() >= 2 => {
                    names.push(format!("user/{}", path[path.len() - 1]));
                    person = Some(StaffId::new(identity.clone()));
                }
                ("sts", Some("assumed-role")) if path.len() == 3 => {
                    let (role, session) = (path[1], path[2]);
                    names.push(role.to_string());
                    if role.starts_with(IDENTITY_CENTER_ROLE) && !session.is_empty() {
                        person = Some(StaffId::new(format!(
                            "identity-center:{account}:{}",
                            session.to_lowercase()
                        )));
                    }
                }
                _ => {}
            }
        } else if !identity.is_empty() {
            // A local identity of `hub local serve` that is not an ARN.
            person = Some(StaffId::new(identity.clone()));
        }
        Self {
            identity,
            names,
            person,
        }
    }
}

/// One rule: whoever a pattern matches holds the role. `*` matches any
/// run of characters (`AWSReservedSSO_HubApprover_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleRule {
    pub role: Role,
    pub pattern: String,
}

/// The mapping from IAM identities to hub roles.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessPolicy {
    pub rules: Vec<RoleRule>,
    /// Every caller holds every role: the local stack when no roles were
    /// configured. Never on AWS.
    pub open: bool,
}

impl AccessPolicy {
    /// `requester=PATTERN,PATTERN;approver=PATTERN;…` (the `HUB_ROLES`
    /// variable, the `StaffRoles` template parameter, `--role`).
    pub fn parse(spec: &str) -> Result<Self, String> {
        let mut rules = Vec::new();
        for entry in spec.split(';').map(str::trim).filter(|e| !e.is_empty()) {
            let (role, patterns) = entry
                .split_once('=')
                .ok_or_else(|| format!("`{entry}` must be ROLE=PATTERN[,PATTERN]"))?;
            let role = Role::parse(role).ok_or_else(|| {
                format!(
                    "unknown role `{}` (roles: requester, approver, registry_admin, auditor)",
                    role.trim()
                )
            })?;
            for pattern in patterns.split(',').map(str::trim) {
                if pattern.is_empty() || pattern == "*" {
                    return Err(format!("role {role} needs a pattern naming someone"));
                }
                rules.push(RoleRule {
                    role,
                    pattern: pattern.to_string(),
                });
            }
        }
        Ok(Self { rules, open: false })
    }

    pub fn open() -> Self {
        Self {
            rules: Vec::new(),
            open: true,
        }
    }

    pub fn roles(&self, principal: &Principal) -> Vec<Role> {
        if self.open {
            return Role::ALL.to_vec();
        }
        let mut roles: Vec<Role> = self
            .rules
            .iter()
            .filter(|rule| principal.names.iter().any(|n| glob(&rule.pattern, n)))
            .map(|rule| rule.role)
            .collect();
        roles.sort();
        roles.dedup();
        roles
    }
}

/// `*` matches any run of characters; everything else itself.
fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    if !text.ends_with(last) {
        return false;
    }
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(at) => rest = &rest[at + middle.len()..],
            None => return false,
        }
    }
    true
}

/// What an operation needs of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Need {
    /// Any one of these roles.
    pub any_of: &'static [Role],
    /// A person (not a self-named session): every change.
    pub person: bool,
}

impl Need {
    pub const READ: Need = Need {
        any_of: &Role::ALL,
        person: false,
    };
    pub const REQUEST: Need = Need {
        any_of: &[Role::Requester],
        person: true,
    };
    pub const APPROVE: Need = Need {
        any_of: &[Role::Approver],
        person: true,
    };
    /// Stopping or narrowing a campaign (cancel, a practice's opt-out).
    pub const STOP: Need = Need {
        any_of: &[Role::Requester, Role::Approver],
        person: true,
    };
    /// Asking for a deadline change, or approving one.
    pub const DEADLINE: Need = Need {
        any_of: &[Role::Requester, Role::Approver],
        person: true,
    };
    pub const REGISTRY: Need = Need {
        any_of: &[Role::RegistryAdmin],
        person: true,
    };

    /// How the missing role is named in a refusal.
    pub fn describe(&self) -> String {
        let names: Vec<&str> = self.any_of.iter().map(|r| r.as_str()).collect();
        if self.any_of.len() == Role::ALL.len() {
            "a staff role (any of requester, approver, registry_admin, auditor)".into()
        } else if names.len() == 1 {
            format!("the {} role", names[0])
        } else {
            format!("the {} role", names.join(" or "))
        }
    }
}

/// An authorised caller: the person (or, for a read, the principal) and
/// their roles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Staff {
    /// Who acts: the person where there is one, else the identity.
    pub id: StaffId,
    pub identity: String,
    pub roles: Vec<Role>,
}

impl Staff {
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}

/// Why a caller may not do something: the 403's message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessRefused {
    #[error("{identity} lacks {needed}")]
    MissingRole { identity: String, needed: String },
    #[error(
        "{identity} is an assumed-role session whose name the caller chose, not a person: \
         sign in through IAM Identity Center or as an IAM user"
    )]
    NotAPerson { identity: String },
}

impl AccessRefused {
    pub fn missing(&self) -> &str {
        match self {
            Self::MissingRole { .. } => "role",
            Self::NotAPerson { .. } => "person",
        }
    }
}

/// Decides whether `identity` may do what `need` asks.
pub fn authorise(
    policy: &AccessPolicy,
    identity: &str,
    need: Need,
) -> Result<Staff, AccessRefused> {
    let principal = Principal::parse(identity);
    let roles = policy.roles(&principal);
    if !need.any_of.iter().any(|r| roles.contains(r)) {
        return Err(AccessRefused::MissingRole {
            identity: principal.identity,
            needed: need.describe(),
        });
    }
    let id = match (&principal.person, need.person) {
        (Some(person), _) => person.clone(),
        (None, false) => StaffId::new(principal.identity.clone()),
        (None, true) => {
            return Err(AccessRefused::NotAPerson {
                identity: principal.identity,
            })
        }
    };
    Ok(Staff {
        id,
        identity: principal.identity,
        roles,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SSO_APPROVER: &str =
        "arn:aws:sts::111122223333:assumed-role/AWSReservedSSO_HubApprover_0123abcd/Alice@nhs.net";
    const SSO_REQUESTER: &str =
        "arn:aws:sts::111122223333:assumed-role/AWSReservedSSO_HubRequester_99ff/alice@nhs.net";

    fn policy() -> AccessPolicy {
        AccessPolicy::parse(
            "requester=AWSReservedSSO_HubRequester_*,user/carol; approver=AWSReservedSSO_HubApprover_*;\
             auditor=ops-reader",
        )
        .expect("policy")
    }

    #[test]
    fn identity_center_sessions_are_people_across_permission_sets() {
        let approver = authorise(&policy(), SSO_APPROVER, Need::APPROVE).expect("approver");
        let requester = authorise(&policy(), SSO_REQUESTER, Need::REQUEST).expect("requester");
        assert_eq!(approver.id, requester.id, "one person in two roles");
        assert_eq!(
            approver.id.as_str(),
            "identity-center:111122223333:alice@nhs.net"
        );
        let refused = authorise(&policy(), SSO_REQUESTER, Need::APPROVE).unwrap_err();
        assert_eq!(
            refused.to_string(),
            format!("{SSO_REQUESTER} lacks the approver role")
        );
    }

    #[test]
    fn users_match_by_name_and_other_sessions_are_not_people() {
        let carol = "arn:aws:iam::111122223333:user/team/carol";
        assert_eq!(
            authorise(&policy(), carol, Need::REQUEST)
                .expect("carol")
                .id
                .as_str(),
            carol
        );
        let session = "arn:aws:sts::111122223333:assumed-role/ops-reader/anything-i-like";
        assert!(authorise(&policy(), session, Need::READ).is_ok());
        let chosen = "arn:aws:sts::111122223333:assumed-role/AWSReservedSSO_HubApproverX/x";
        assert!(matches!(
            authorise(&policy(), chosen, Need::APPROVE),
            Err(AccessRefused::MissingRole { .. })
        ));
        let writer = AccessPolicy::parse("requester=ops-reader").expect("policy");
        assert!(matches!(
            authorise(&writer, session, Need::REQUEST),
            Err(AccessRefused::NotAPerson { .. })
        ));
        assert!(authorise(&AccessPolicy::default(), carol, Need::READ).is_err());
    }

    #[test]
    fn policies_refuse_what_they_cannot_read() {
        assert!(AccessPolicy::parse("boss=user/x").is_err());
        assert!(AccessPolicy::parse("approver=*").is_err());
        assert!(AccessPolicy::parse("approver").is_err());
        assert!(AccessPolicy::parse("").expect("empty").rules.is_empty());
        assert!(glob("a*c*e", "abcde") && !glob("a*c*e", "abde") && !glob("ab*b", "ab"));
    }
}
