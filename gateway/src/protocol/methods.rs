//! The methods BeamClaw implements, the scope each needs, and how granted scopes are checked
//! (OpenClaw's `method-scopes.ts` rules: `operator.admin` satisfies everything,
//! `operator.write` satisfies `operator.read`, any other scope must be held exactly).

use super::schema_tables::{OFFICIAL_METHODS, PARAMS_PROPERTIES};

pub(crate) const SCOPE_READ: &str = "operator.read";
pub(crate) const SCOPE_WRITE: &str = "operator.write";
pub(crate) const SCOPE_ADMIN: &str = "operator.admin";
pub(crate) const SCOPE_APPROVALS: &str = "operator.approvals";
pub(crate) const SCOPE_PAIRING: &str = "operator.pairing";

/// Scopes an operator may ask for. Others (talk, questions) belong to surfaces BeamClaw does
/// not serve and are refused at connect.
pub(crate) const OPERATOR_SCOPES: &[&str] =
    &[SCOPE_ADMIN, SCOPE_READ, SCOPE_WRITE, SCOPE_APPROVALS, SCOPE_PAIRING];

/// What a shared-secret client that names no scopes gets (OpenClaw's CLI default set).
pub(crate) const SHARED_SECRET_DEFAULT_SCOPES: &[&str] = OPERATOR_SCOPES;

macro_rules! methods {
    ($($variant:ident => $name:literal, $scope:expr;)*) => {
        /// A method BeamClaw implements.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub(crate) enum Method { $($variant,)* }

        impl Method {
            pub(crate) const ALL: &'static [Method] = &[$(Method::$variant,)*];

            pub(crate) fn name(self) -> &'static str {
                match self { $(Method::$variant => $name,)* }
            }

            /// The scope a caller needs.
            pub(crate) fn scope(self) -> &'static str {
                match self { $(Method::$variant => $scope,)* }
            }

            pub(crate) fn parse(name: &str) -> Option<Method> {
                match name { $($name => Some(Method::$variant),)* _ => None }
            }
        }
    };
}

// Scopes follow the official table (protocol.schema.json `methods`), with two deliberate
// differences: methods the table marks "dynamic" (plugin-dependent in OpenClaw) need
// operator.write here, and config.get needs operator.admin like the other config.* methods
// because the config holds provider keys.
methods! {
    Health => "health", SCOPE_READ;
    Status => "status", SCOPE_READ;
    SystemPresence => "system-presence", SCOPE_READ;
    ModelsList => "models.list", SCOPE_READ;
    ConfigGet => "config.get", SCOPE_ADMIN;
    ConfigSet => "config.set", SCOPE_ADMIN;
    ConfigPatch => "config.patch", SCOPE_ADMIN;
    ChatSend => "chat.send", SCOPE_WRITE;
    ChatHistory => "chat.history", SCOPE_READ;
    ChatAbort => "chat.abort", SCOPE_WRITE;
    ChatInject => "chat.inject", SCOPE_ADMIN;
    Agent => "agent", SCOPE_WRITE;
    AgentWait => "agent.wait", SCOPE_WRITE;
    SessionsList => "sessions.list", SCOPE_READ;
    SessionsGet => "sessions.get", SCOPE_READ;
    SessionsCreate => "sessions.create", SCOPE_WRITE;
    SessionsPatch => "sessions.patch", SCOPE_WRITE;
    SessionsReset => "sessions.reset", SCOPE_ADMIN;
    SessionsDelete => "sessions.delete", SCOPE_WRITE;
    SessionsSubscribe => "sessions.subscribe", SCOPE_READ;
    SessionsMessagesSubscribe => "sessions.messages.subscribe", SCOPE_READ;
    SessionsMessagesUnsubscribe => "sessions.messages.unsubscribe", SCOPE_READ;
    SessionsSend => "sessions.send", SCOPE_WRITE;
    SessionsAbort => "sessions.abort", SCOPE_WRITE;
    ExecApprovalList => "exec.approval.list", SCOPE_APPROVALS;
    ExecApprovalGet => "exec.approval.get", SCOPE_APPROVALS;
    ExecApprovalResolve => "exec.approval.resolve", SCOPE_APPROVALS;
    DevicePairList => "device.pair.list", SCOPE_PAIRING;
    DevicePairApprove => "device.pair.approve", SCOPE_PAIRING;
    DevicePairReject => "device.pair.reject", SCOPE_PAIRING;
    DevicePairRemove => "device.pair.remove", SCOPE_PAIRING;
    DeviceTokenRotate => "device.token.rotate", SCOPE_PAIRING;
    DeviceTokenRevoke => "device.token.revoke", SCOPE_PAIRING;
    SkillsStatus => "skills.status", SCOPE_READ;
}

impl Method {
    /// The property names the official `<Name>Params` schema allows, when it is a closed
    /// object.
    pub(crate) fn allowed_params(self) -> Option<&'static [&'static str]> {
        let name = self.name();
        PARAMS_PROPERTIES.iter().find(|(method, _)| *method == name).map(|(_, props)| *props)
    }
}

/// Whether OpenClaw's schema names this method (then the refusal says "not supported by
/// BeamClaw" rather than "unknown").
pub(crate) fn is_official(name: &str) -> bool {
    OFFICIAL_METHODS.iter().any(|(method, _)| *method == name)
}

/// Checks `granted` against the scope `required`; `Err` carries the missing scope.
pub(crate) fn authorize(granted: &[String], required: &'static str) -> Result<(), &'static str> {
    let holds = |scope: &str| granted.iter().any(|g| g == scope);
    if holds(SCOPE_ADMIN) || holds(required) {
        return Ok(());
    }
    if required == SCOPE_READ && holds(SCOPE_WRITE) {
        return Ok(());
    }
    Err(required)
}

/// Whether `granted` covers every scope in `requested` (for device scope upgrades).
pub(crate) fn covers(granted: &[String], requested: &[String]) -> bool {
    requested.iter().all(|scope| {
        OPERATOR_SCOPES
            .iter()
            .find(|known| *known == scope)
            .is_some_and(|known| authorize(granted, known).is_ok())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scopes(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn every_implemented_method_is_official() {
        for method in Method::ALL {
            assert!(is_official(method.name()), "{} is not in the official table", method.name());
            assert_eq!(Method::parse(method.name()), Some(*method));
        }
    }

    #[test]
    fn scopes_match_the_official_table_except_the_documented_differences() {
        for method in Method::ALL {
            let official = OFFICIAL_METHODS
                .iter()
                .find(|(name, _)| *name == method.name())
                .map(|(_, scope)| *scope)
                .unwrap();
            let expected = match (official, *method) {
                ("dynamic", _) => SCOPE_WRITE,
                (_, Method::ConfigGet) => SCOPE_ADMIN,
                (scope, _) => scope,
            };
            assert_eq!(method.scope(), expected, "{}", method.name());
        }
    }

    #[test]
    fn admin_covers_everything_and_write_covers_read() {
        assert!(authorize(&scopes(&[SCOPE_ADMIN]), SCOPE_PAIRING).is_ok());
        assert!(authorize(&scopes(&[SCOPE_WRITE]), SCOPE_READ).is_ok());
        assert_eq!(authorize(&scopes(&[SCOPE_READ]), SCOPE_WRITE), Err(SCOPE_WRITE));
        assert_eq!(authorize(&scopes(&[SCOPE_WRITE]), SCOPE_ADMIN), Err(SCOPE_ADMIN));
        assert_eq!(authorize(&[], SCOPE_READ), Err(SCOPE_READ));
    }

    #[test]
    fn covers_refuses_unknown_and_wider_scopes() {
        assert!(covers(&scopes(&[SCOPE_ADMIN]), &scopes(&[SCOPE_READ, SCOPE_PAIRING])));
        assert!(!covers(&scopes(&[SCOPE_READ]), &scopes(&[SCOPE_WRITE])));
        assert!(!covers(&scopes(&[SCOPE_ADMIN]), &scopes(&["operator.talk"])));
    }

    #[test]
    fn chat_send_params_come_from_the_schema() {
        let allowed = Method::ChatSend.allowed_params().unwrap();
        assert!(allowed.contains(&"idempotencyKey"));
        assert!(!allowed.contains(&"bogus"));
    }
}
