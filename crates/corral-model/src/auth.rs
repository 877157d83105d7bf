//! Who may do what over the API: roles, the permission each route needs, named API tokens
//! and the audit log's entries, plus the small pure parsers their front ends share (token
//! lifetimes such as `30d`, VM name patterns such as `web-*`).
//!
//! The agent stores tokens hashed (`corral-agent`'s `auth` module); the API decides each
//! request's permission from one table (`corral-api`'s `auth` module) and asks
//! [`Role::allows`] here, so the order of roles is defined once.

use serde::{Deserialize, Serialize};
use std::fmt;

/// What a token may do. Each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads: lists, shows, statistics, tasks, the event stream.
    Viewer,
    /// Also powers VMs, opens their consoles, changes their CD, cancels their tasks.
    Operator,
    /// Everything: creating and deleting, hosts, the pool, storage, networks, templates,
    /// import and export, tokens and the audit log.
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Operator, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// Whether this role may do what `needed` demands.
    pub fn allows(self, needed: Permission) -> bool {
        match needed {
            Permission::Public | Permission::Ticket | Permission::Read => true,
            Permission::Operate => self >= Role::Operator,
            Permission::Admin => self == Role::Admin,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown role {s:?}: use admin, operator or viewer"))
    }
}

/// What a route needs, from the API's permission table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    /// No credentials: the web console's page and its login.
    Public,
    /// A console websocket: its one-time ticket is the credential (issuing one needs
    /// `operate`).
    Ticket,
    /// Read anything (VMs a token's pattern excludes stay hidden).
    Read,
    /// Power and console VMs (those a token's pattern allows).
    Operate,
    /// Everything else.
    Admin,
}

impl Permission {
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Public => "public",
            Permission::Ticket => "ticket",
            Permission::Read => "read",
            Permission::Operate => "operate",
            Permission::Admin => "admin",
        }
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `POST /v1/tokens`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct TokenCreateRequest {
    pub name: String,
    pub role: Role,
    /// Only VMs whose name matches this pattern (`*` any run, `?` one character); viewer
    /// and operator tokens only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vms: Option<String>,
    /// Lifetime in seconds; none: the token lasts until revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_secs: Option<u64>,
}

/// A token as listed: never its secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct TokenInfo {
    pub name: String,
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vms: Option<String>,
    pub created_ms: u64,
    /// None: until revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<u64>,
    /// When it last authenticated a request (recorded at most once a minute).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_ms: Option<u64>,
}

/// The answer to `POST /v1/tokens`: the only time the secret is shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct TokenCreated {
    pub token: TokenInfo,
    /// `NAME.SECRET`: what a client sends as `Authorization: Bearer ...`.
    pub secret: String,
}

/// One audited request: who, what, when, from where, and how it ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct AuditEntry {
    pub time_ms: u64,
    /// The token's name (`-` when none was accepted); `@bootstrap` is the agent's token file, `@local` the unix socket,
    /// `@pool` a pool member acting on its own.
    pub who: String,
    /// None when the request was refused before its caller was known (a wrong token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    pub method: String,
    /// The route's pattern, e.g. `/v1/vms/{name}/actions/{action}`.
    pub route: String,
    /// The path as requested (without the query).
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<String>,
    /// The client's address (`IP:PORT`), or `unix` with the caller's uid.
    pub peer: String,
    /// The HTTP status answered (101 for a console that was opened).
    pub status: u16,
    /// The pool member that recorded it.
    pub host: String,
}

/// `GET /v1/audit` filters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Only entries at or after this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_ms: Option<u64>,
    /// Only entries about this VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<String>,
}

/// The longest lifetime a token may be given (ten years).
pub const MAX_TOKEN_LIFETIME_SECS: u64 = 10 * 365 * 86400;

/// A span of time such as `90s`, `15m`, `12h`, `30d` or `2w` in seconds.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let unit_secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        "w" => 7 * 86400,
        _ => {
            return Err(format!(
                "{text:?} is not a duration: use a number and a unit, s, m, h, d or w (e.g. 30d)"
            ))
        }
    };
    let n: u64 = digits.parse().map_err(|_| {
        format!("{text:?} is not a duration: it needs a number before the unit (e.g. 30d)")
    })?;
    if n == 0 {
        return Err(format!(
            "{text:?} is no time at all: give a positive duration"
        ));
    }
    n.checked_mul(unit_secs)
        .ok_or_else(|| format!("{text:?} is too long"))
}

/// Check a VM name pattern: what names allow, plus `*` and `?`.
pub fn validate_vm_pattern(pattern: &str) -> Result<(), String> {
    if pattern.is_empty() || pattern.len() > 63 {
        return Err(format!(
            "VM pattern {pattern:?} must be 1 to 63 characters long"
        ));
    }
    if let Some(bad) = pattern
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '*' | '?')))
    {
        return Err(format!(
            "VM pattern {pattern:?} contains {bad:?}; use letters, digits, '.', '_', '-', and '*' or '?' as wildcards"
        ));
    }
    Ok(())
}

/// Whether `name` matches `pattern` (`*`: any run of characters, `?`: one character).
pub fn vm_pattern_matches(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // Iterative matching with one backtrack point: linear in practice, no recursion a long
    // pattern could exhaust.
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ni));
                pi += 1;
            }
            Some(&c) if c == '?' || c == n[ni] => {
                pi += 1;
                ni += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    pi = sp + 1;
                    ni = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_include_the_ones_before() {
        use Permission::*;
        let table = [
            (Role::Viewer, [true, false, false]),
            (Role::Operator, [true, true, false]),
            (Role::Admin, [true, true, true]),
        ];
        for (role, want) in table {
            let got = [role.allows(Read), role.allows(Operate), role.allows(Admin)];
            assert_eq!(got, want, "{role}");
        }
        assert_eq!("operator".parse::<Role>(), Ok(Role::Operator));
        let e = "root".parse::<Role>().unwrap_err();
        assert!(e.contains("admin, operator or viewer"), "{e}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30d"), Ok(30 * 86400));
        assert_eq!(parse_duration("90s"), Ok(90));
        assert_eq!(parse_duration("2w"), Ok(14 * 86400));
        assert_eq!(parse_duration(" 1h "), Ok(3600));
        for (bad, needle) in [
            ("30", "unit"),
            ("d", "number"),
            ("30x", "unit"),
            ("0d", "positive"),
            ("-1d", "unit"),
            ("99999999999999999999d", "number"),
            ("9999999999999999999w", "too long"),
        ] {
            let e = parse_duration(bad).unwrap_err();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }

    #[test]
    fn patterns() {
        let cases = [
            ("web-*", "web-01", true),
            ("web-*", "web-", true),
            ("web-*", "db-01", false),
            ("*", "anything", true),
            ("web-??", "web-01", true),
            ("web-??", "web-001", false),
            ("*-prod", "api-prod", true),
            ("*-prod", "api-prod2", false),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
        ];
        for (p, n, want) in cases {
            assert_eq!(vm_pattern_matches(p, n), want, "{p} ~ {n}");
        }
        assert!(validate_vm_pattern("web-*").is_ok());
        assert!(validate_vm_pattern("").is_err());
        assert!(validate_vm_pattern("web/*").unwrap_err().contains("'/'"));
    }
}
