//! What the platform team lets TaxiPipeline authors ask of the operator, pure: which worker images
//! a pipeline may name in `spec.worker.image`, and whether it may run its workers as an existing
//! ServiceAccount (`spec.worker.serviceAccountName`).
//!
//! The operator acts with its own, cluster-wide permissions on behalf of whoever may create a
//! TaxiPipeline; without these limits an author could make it run any image, or run pods as any
//! ServiceAccount of the namespace with that account's permissions. The flags of
//! `taxi-operator run` set a [`WorkerPolicy`]; the reconcile pass's admit step applies it before
//! anything is written.

use std::fmt;
use std::str::FromStr;

use k8s_openapi::api::core::v1::ServiceAccount;

/// The label a ServiceAccount must carry, with the value `"true"`, before a pipeline may name it
/// under [`ServiceAccountPolicy::Labeled`].
pub const WORKERS_ALLOWED_LABEL: &str = "taxipipeline.io/workers-allowed";

/// The limits the operator puts on the worker pods a pipeline asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerPolicy {
    /// Which repositories `spec.worker.image` may name.
    pub allowed_image_repositories: AllowedImages,
    /// Whether `spec.worker.serviceAccountName` may name an existing ServiceAccount.
    pub service_accounts: ServiceAccountPolicy,
}

impl WorkerPolicy {
    /// The policy of the flags: `allowed` (`--allowed-image-repositories`; empty entries are
    /// ignored, and none at all means the repository of `worker_image`, the operator's
    /// `--worker-image`) and `service_accounts` (`--service-account-policy`).
    pub fn new(
        allowed: &[String],
        service_accounts: ServiceAccountPolicy,
        worker_image: &str,
    ) -> Result<WorkerPolicy, PolicyError> {
        Ok(WorkerPolicy { allowed_image_repositories: AllowedImages::parse(allowed, worker_image)?, service_accounts })
    }

    /// Why `spec.worker.image` = `image` is refused, or `None` when it is allowed.
    pub fn check_image(&self, image: &str) -> Option<Violation> {
        (!self.allowed_image_repositories.allows(image))
            .then(|| Violation::Image { image: image.to_owned(), allowed: self.allowed_image_repositories.to_string() })
    }

    /// Why the workers may not run as the ServiceAccount `namespace/name` the spec names, or
    /// `None` when they may. `found` is that ServiceAccount as read (`None`: it does not exist);
    /// only [`ServiceAccountPolicy::Labeled`] looks at it.
    pub fn check_service_account(
        &self,
        namespace: &str,
        name: &str,
        found: Option<&ServiceAccount>,
    ) -> Option<Violation> {
        let account = || format!("{namespace}/{name}");
        match self.service_accounts {
            ServiceAccountPolicy::Any => None,
            ServiceAccountPolicy::Forbid => Some(Violation::ServiceAccountForbidden { account: account() }),
            ServiceAccountPolicy::Labeled => match found {
                None => Some(Violation::ServiceAccountMissing { account: account() }),
                Some(sa) if carries_workers_allowed(sa) => None,
                Some(_) => Some(Violation::ServiceAccountUnlabeled { account: account() }),
            },
        }
    }

    /// Whether checking `spec.worker.serviceAccountName` needs the ServiceAccount read.
    pub fn reads_service_accounts(&self) -> bool {
        self.service_accounts == ServiceAccountPolicy::Labeled
    }
}

fn carries_workers_allowed(sa: &ServiceAccount) -> bool {
    sa.metadata.labels.as_ref().and_then(|l| l.get(WORKERS_ALLOWED_LABEL)).is_some_and(|v| v == "true")
}

/// The repositories worker images may come from (`--allowed-image-repositories`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AllowedImages {
    /// `*`: any image.
    Any,
    /// An image is allowed when its repository equals one of these, or starts with one that
    /// ends in `/` (a registry or an organisation). Never empty.
    Repositories(Vec<String>),
}

impl AllowedImages {
    /// The entries of the flag: `*` alone allows any image; every other entry must be a
    /// repository without a tag or digest (it would never match otherwise). No entry at all
    /// means the repository of `worker_image`.
    pub fn parse(entries: &[String], worker_image: &str) -> Result<AllowedImages, PolicyError> {
        let entries: Vec<&str> = entries.iter().map(|e| e.trim()).filter(|e| !e.is_empty()).collect();
        if entries.contains(&"*") {
            return Ok(AllowedImages::Any);
        }
        if entries.is_empty() {
            let own = repository_of(worker_image);
            if own.is_empty() {
                return Err(PolicyError::WorkerImage(worker_image.to_owned()));
            }
            return Ok(AllowedImages::Repositories(vec![own.to_owned()]));
        }
        for entry in &entries {
            let valid = match entry.strip_suffix('/') {
                // A prefix may end in a registry's port (`host:5000/`): only a digest is wrong there.
                Some(prefix) => !prefix.is_empty() && !prefix.contains('@'),
                None => repository_of(entry) == *entry,
            };
            if !valid || entry.contains(char::is_whitespace) {
                return Err(PolicyError::Entry((*entry).to_owned()));
            }
        }
        Ok(AllowedImages::Repositories(entries.into_iter().map(str::to_owned).collect()))
    }

    /// Whether a pipeline may run `image`. The reference is compared as written: `nginx` and
    /// `docker.io/library/nginx` are different repositories here, so list the form the authors use.
    pub fn allows(&self, image: &str) -> bool {
        let repositories = match self {
            AllowedImages::Any => return true,
            AllowedImages::Repositories(repositories) => repositories,
        };
        let repository = repository_of(image);
        !repository.is_empty()
            && repositories.iter().any(|allowed| {
                if allowed.ends_with('/') {
                    // Below the prefix only: `ghcr.io/a/` allows `ghcr.io/a/b`, never `ghcr.io/ab`.
                    repository.starts_with(allowed.as_str()) && repository.len() > allowed.len()
                } else {
                    repository == allowed
                }
            })
    }
}

impl fmt::Display for AllowedImages {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AllowedImages::Any => f.write_str("*"),
            AllowedImages::Repositories(repositories) => f.write_str(&repositories.join(", ")),
        }
    }
}

/// The repository of an image reference: the reference without its `@digest` and `:tag`. A
/// registry's port (`host:5000/team/app:1.2`) is kept: a tag only follows the last `/`.
pub fn repository_of(image: &str) -> &str {
    let image = image.split_once('@').map_or(image, |(name, _digest)| name);
    let last_slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[last_slash..].find(':') {
        Some(colon) => &image[..last_slash + colon],
        None => image,
    }
}

/// Whether a pipeline may name an existing ServiceAccount for its workers
/// (`--service-account-policy`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ServiceAccountPolicy {
    /// Never: the workers always run as the ServiceAccount the operator creates.
    Forbid,
    /// Only one that carries the label [`WORKERS_ALLOWED_LABEL`]`: "true"`, which the platform
    /// team sets on the accounts it hands out.
    #[default]
    Labeled,
    /// Any ServiceAccount of the pipeline's namespace.
    Any,
}

impl FromStr for ServiceAccountPolicy {
    type Err = PolicyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "forbid" => Ok(ServiceAccountPolicy::Forbid),
            "labeled" => Ok(ServiceAccountPolicy::Labeled),
            "any" => Ok(ServiceAccountPolicy::Any),
            other => Err(PolicyError::ServiceAccountPolicy(other.to_owned())),
        }
    }
}

impl fmt::Display for ServiceAccountPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ServiceAccountPolicy::Forbid => "forbid",
            ServiceAccountPolicy::Labeled => "labeled",
            ServiceAccountPolicy::Any => "any",
        })
    }
}

/// A flag value the policy cannot be built from (the operator does not start).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// An `--allowed-image-repositories` entry carries a tag or digest, or a space.
    #[error(
        "the allowed image repository {0:?} is not a repository: name it without a tag or digest \
         (ghcr.io/team/app), end it with / for everything below (ghcr.io/team/), or use *"
    )]
    Entry(String),
    /// `--worker-image` has no repository to allow by default.
    #[error("the worker image {0:?} names no repository")]
    WorkerImage(String),
    /// `--service-account-policy` is none of the three.
    #[error("the service account policy {0:?} is not one of forbid, labeled, any")]
    ServiceAccountPolicy(String),
}

/// Why a pipeline's spec is outside the policy; the text is the `PolicyViolation` condition's
/// message and the Warning Event's note.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// `spec.worker.image` is from a repository the operator does not allow.
    #[error("spec.worker.image {image} is not allowed: this operator runs worker images from {allowed} only")]
    Image {
        /// The image named.
        image: String,
        /// The allowed repositories, as listed.
        allowed: String,
    },
    /// The operator allows no user-named ServiceAccount.
    #[error(
        "spec.worker.serviceAccountName {account} is not allowed: this operator runs workers only as the \
         ServiceAccount it creates; remove the field"
    )]
    ServiceAccountForbidden {
        /// `namespace/name` of the ServiceAccount.
        account: String,
    },
    /// The named ServiceAccount does not exist (so it cannot carry the label).
    #[error(
        "spec.worker.serviceAccountName {account} does not exist; the workers may run only as a ServiceAccount \
         labeled taxipipeline.io/workers-allowed: \"true\""
    )]
    ServiceAccountMissing {
        /// `namespace/name` of the ServiceAccount.
        account: String,
    },
    /// The named ServiceAccount lacks the label.
    #[error(
        "spec.worker.serviceAccountName {account} is not labeled taxipipeline.io/workers-allowed: \"true\"; the \
         platform team sets that label on the ServiceAccounts workers may run as"
    )]
    ServiceAccountUnlabeled {
        /// `namespace/name` of the ServiceAccount.
        account: String,
    },
}

impl Violation {
    /// Whether a change outside the pipeline can lift the refusal: the named ServiceAccount may be
    /// created or labeled without anyone editing the TaxiPipeline, so the pipeline is looked at
    /// again. The other refusals change only with the spec or the operator's flags (a restart).
    pub fn may_lift_without_an_edit(&self) -> bool {
        matches!(self, Violation::ServiceAccountMissing { .. } | Violation::ServiceAccountUnlabeled { .. })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    const OWN_IMAGE: &str = "ghcr.io/taxipipeline/taxi:0.4.0";

    fn allowed(entries: &[&str]) -> AllowedImages {
        let entries: Vec<String> = entries.iter().map(|e| (*e).to_owned()).collect();
        AllowedImages::parse(&entries, OWN_IMAGE).expect("valid entries")
    }

    #[test]
    fn the_repository_drops_tag_and_digest_but_keeps_a_registry_port() {
        assert_eq!(repository_of("ghcr.io/taxipipeline/taxi:0.4.0"), "ghcr.io/taxipipeline/taxi");
        assert_eq!(repository_of("registry.local:5000/team/taxi:v1"), "registry.local:5000/team/taxi");
        assert_eq!(repository_of("registry.local:5000/team/taxi"), "registry.local:5000/team/taxi");
        assert_eq!(repository_of("taxi@sha256:0123abcd"), "taxi");
        assert_eq!(repository_of("host:5000/taxi:v1@sha256:0123abcd"), "host:5000/taxi");
        assert_eq!(repository_of("nginx"), "nginx");
        assert_eq!(repository_of(":v1"), "");
    }

    #[test]
    fn no_entry_allows_only_the_operators_own_repository() {
        let own = allowed(&[]);
        assert_eq!(own, AllowedImages::Repositories(vec!["ghcr.io/taxipipeline/taxi".to_owned()]));
        assert!(own.allows("ghcr.io/taxipipeline/taxi:0.5.0"));
        assert!(own.allows("ghcr.io/taxipipeline/taxi@sha256:0123abcd"));
        assert!(!own.allows("ghcr.io/taxipipeline/taxi-debug:0.4.0"), "a longer name is another repository");
        assert!(!own.allows("ghcr.io/taxipipeline/taxi/shell:1"));
        assert!(!own.allows("docker.io/attacker/taxi:0.4.0"));
        assert_eq!(allowed(&["", " "]), own, "empty entries are ignored");
    }

    #[test]
    fn an_entry_ending_in_a_slash_allows_everything_below_it_and_nothing_beside_it() {
        let team = allowed(&["registry.local:5000/team/", "ghcr.io/taxipipeline/taxi"]);
        assert!(team.allows("registry.local:5000/team/taxi:v1"));
        assert!(team.allows("registry.local:5000/team/tools/taxi@sha256:0123abcd"));
        assert!(!team.allows("registry.local:5000/teammate/taxi:v1"));
        assert!(!team.allows("registry.local:5000/team/"), "no repository below the prefix");
        assert!(!team.allows("registry.local:5001/team/taxi:v1"));
        assert!(team.allows("ghcr.io/taxipipeline/taxi:0.4.0"));
        assert!(!team.allows("ghcr.io/taxipipeline/other:0.4.0"));
    }

    #[test]
    fn a_star_allows_any_image() {
        let any = allowed(&["ghcr.io/taxipipeline/taxi", "*"]);
        assert_eq!(any, AllowedImages::Any);
        assert!(any.allows("docker.io/anything/else:latest"));
    }

    #[test]
    fn entries_with_a_tag_or_digest_are_refused_at_start() {
        for entry in ["ghcr.io/taxipipeline/taxi:0.4.0", "taxi@sha256:0123abcd", "host:5000", "two words/"] {
            let error = AllowedImages::parse(&[entry.to_owned()], OWN_IMAGE).expect_err(entry);
            assert_eq!(error, PolicyError::Entry(entry.to_owned()));
        }
        assert!(AllowedImages::parse(&["host:5000/".to_owned()], OWN_IMAGE).is_ok(), "a registry with a port");
        assert_eq!(AllowedImages::parse(&[], ":v1"), Err(PolicyError::WorkerImage(":v1".to_owned())));
    }

    #[test]
    fn an_image_outside_the_policy_is_a_violation_naming_both() {
        let policy = WorkerPolicy::new(&[], ServiceAccountPolicy::Labeled, OWN_IMAGE).expect("policy");
        assert_eq!(policy.check_image("ghcr.io/taxipipeline/taxi:0.5.0"), None);
        let violation = policy.check_image("docker.io/attacker/miner:1").expect("refused");
        assert_eq!(
            violation.to_string(),
            "spec.worker.image docker.io/attacker/miner:1 is not allowed: this operator runs worker images from \
             ghcr.io/taxipipeline/taxi only"
        );
    }

    fn service_account(labels: &[(&str, &str)]) -> ServiceAccount {
        let labels: BTreeMap<String, String> = labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        ServiceAccount {
            metadata: ObjectMeta { name: Some("reader".into()), labels: Some(labels), ..ObjectMeta::default() },
            ..ServiceAccount::default()
        }
    }

    #[test]
    fn the_service_account_policy_decides_from_the_label() {
        let policy =
            |service_accounts| WorkerPolicy { allowed_image_repositories: AllowedImages::Any, service_accounts };
        let labeled = service_account(&[(WORKERS_ALLOWED_LABEL, "true")]);
        let other_value = service_account(&[(WORKERS_ALLOWED_LABEL, "yes")]);
        let plain = service_account(&[("team", "a")]);
        let check = |p: ServiceAccountPolicy, found| policy(p).check_service_account("taxi", "reader", found);
        let account = "taxi/reader".to_owned();

        assert_eq!(check(ServiceAccountPolicy::Labeled, Some(&labeled)), None);
        assert_eq!(
            check(ServiceAccountPolicy::Labeled, Some(&other_value)),
            Some(Violation::ServiceAccountUnlabeled { account: account.clone() })
        );
        assert_eq!(
            check(ServiceAccountPolicy::Labeled, Some(&plain)),
            Some(Violation::ServiceAccountUnlabeled { account: account.clone() })
        );
        assert_eq!(
            check(ServiceAccountPolicy::Labeled, None),
            Some(Violation::ServiceAccountMissing { account: account.clone() })
        );
        assert_eq!(
            check(ServiceAccountPolicy::Forbid, Some(&labeled)),
            Some(Violation::ServiceAccountForbidden { account })
        );
        assert_eq!(check(ServiceAccountPolicy::Any, None), None);
        assert!(policy(ServiceAccountPolicy::Labeled).reads_service_accounts());
        assert!(!policy(ServiceAccountPolicy::Any).reads_service_accounts());
        let message = check(ServiceAccountPolicy::Labeled, Some(&plain)).expect("refused").to_string();
        assert!(message.contains(&format!("{WORKERS_ALLOWED_LABEL}: \"true\"")), "the label it names: {message}");
    }

    #[test]
    fn the_service_account_policy_parses_its_three_values() {
        for policy in [ServiceAccountPolicy::Forbid, ServiceAccountPolicy::Labeled, ServiceAccountPolicy::Any] {
            assert_eq!(policy.to_string().parse::<ServiceAccountPolicy>(), Ok(policy));
        }
        assert_eq!(ServiceAccountPolicy::default(), ServiceAccountPolicy::Labeled);
        assert_eq!("label".parse::<ServiceAccountPolicy>(), Err(PolicyError::ServiceAccountPolicy("label".to_owned())));
    }
}
