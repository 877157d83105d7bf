//! The pure half of planning an install, shared by `vm install` and `vm install --dry-run`:
//! which template an install uses when none is given (the one for the OS the tree holds, by
//! its osinfo short id), the installer's kernel command line, and the [`InstallPlan`] a dry
//! run answers with, read off the VM spec the real install would create.
//!
//! The effectful half (checks against the host, tree detection over the network) stays in
//! `install.rs`, which calls these functions at the same points for both, so a dry run and a
//! real install cannot disagree on what they would do.

use corral_install::templates::ArgValues;
use corral_install::tree::{Detected, Layout};
use corral_install::{Catalog, SourceUrl, Template};
use corral_model::install::{
    DetectedTree, InstallPlan, PlannedDisk, PlannedNic, TemplateChoice, TemplateReason,
};
use corral_model::{BootDevice, VmSpec};

/// The template of an install: the one given, else the catalogue's template for the detected
/// OS (a built-in or user one, else osinfo-db's), else none.
pub(crate) fn choose_template(
    catalog: &Catalog,
    given: Option<&Template>,
    detected_os: Option<&str>,
) -> (Option<Template>, TemplateChoice) {
    if let Some(t) = given {
        return (
            Some(t.clone()),
            TemplateChoice {
                name: Some(t.name.clone()),
                reason: TemplateReason::Given,
                explanation: format!("template {} (given with --template)", t.name),
            },
        );
    }
    let Some(os) = detected_os else {
        return (
            None,
            TemplateChoice {
                name: None,
                reason: TemplateReason::None,
                explanation: "no template: none given and the source names no OS; corral's \
                              defaults and the request's own settings apply"
                    .into(),
            },
        );
    };
    match catalog.template_for_os(os) {
        Some(t) if t.name.starts_with("osinfo:") => (
            Some(t.clone()),
            TemplateChoice {
                name: Some(t.name.clone()),
                reason: TemplateReason::OsinfoDefaults,
                explanation: format!(
                    "template {} (no corral template is for the detected OS {os}; osinfo-db's defaults)",
                    t.name
                ),
            },
        ),
        Some(t) => (
            Some(t.clone()),
            TemplateChoice {
                name: Some(t.name.clone()),
                reason: TemplateReason::DetectedOs,
                explanation: format!("template {} (matched from the detected OS {os})", t.name),
            },
        ),
        None => (
            None,
            TemplateChoice {
                name: None,
                reason: TemplateReason::None,
                explanation: format!(
                    "no template: none given and neither corral nor osinfo-db has one for the \
                     detected OS {os}; corral's defaults and the request's own settings apply"
                ),
            },
        ),
    }
}

/// The installer's kernel command line: the tree's arguments, the template's `installer_args`
/// (placeholders filled in), then the user's `--extra-args`.
pub(crate) fn compose_cmdline(
    tree_args: &str,
    template: Option<&Template>,
    values: &ArgValues,
    extra_args: &str,
) -> String {
    let template_args = template
        .map(|t| t.render_installer_args(values))
        .unwrap_or_default();
    [tree_args, template_args.as_str(), extra_args]
        .iter()
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim())
        .collect::<Vec<_>>()
        .join(" ")
}

/// What detection found, as the plan shows it (URLs without passwords).
pub(crate) fn detected_tree(d: &Detected, url: &SourceUrl) -> DetectedTree {
    let dir = url.as_dir();
    DetectedTree {
        os: d.os.osinfo_id.clone(),
        name: d.os.name.clone(),
        version: d.os.version.clone(),
        codename: d.os.codename.clone(),
        family: d.os.family.as_str().to_string(),
        layout: layout_name(d.layout).to_string(),
        kernel: dir.join(&d.kernel_path).to_string(),
        initrd: dir.join(&d.initrd_path).to_string(),
        probes: d.probes.iter().map(ToString::to_string).collect(),
    }
}

fn layout_name(l: Layout) -> &'static str {
    l.as_str()
}

/// Everything but detection, read off the spec the install would create.
pub(crate) struct PlanInputs {
    pub source: &'static str,
    pub location: Option<String>,
    pub detected: Option<DetectedTree>,
    pub template: TemplateChoice,
    pub kernel_args: Option<String>,
    pub notes: Vec<String>,
}

pub(crate) fn plan_of(spec: &VmSpec, inputs: PlanInputs) -> InstallPlan {
    let disks = spec
        .disks
        .iter()
        .map(|d| PlannedDisk {
            device: d.device.clone(),
            size_bytes: d.size_bytes,
            format: d.format,
            bus: d.bus,
            sr: d.sr.clone(),
            import_from: None,
        })
        .collect();
    let nics = spec
        .nics
        .iter()
        .map(|n| PlannedNic {
            device: n.device.clone(),
            network: n.network.clone(),
            model: n.model,
        })
        .collect();
    InstallPlan {
        name: spec.name.clone(),
        source: inputs.source.to_string(),
        location: inputs.location,
        detected: inputs.detected,
        template: inputs.template,
        kernel_args: inputs.kernel_args,
        vcpus: spec.vcpus,
        memory_bytes: spec.memory_bytes,
        firmware: spec.firmware,
        boot_device: if spec.kernel_boot.is_some() {
            BootDevice::Disk
        } else {
            spec.boot_device
        },
        disks,
        cdrom: spec.cdroms.first().and_then(|c| c.media.clone()),
        nics,
        timeout_secs: spec.install.as_ref().and_then(|i| i.timeout_secs),
        notes: inputs.notes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Catalog {
        Catalog::load(None).expect("catalog")
    }

    #[test]
    fn the_detected_os_picks_the_template() {
        let cat = catalog();
        let given = cat.get("corral-test-guest").expect("built-in");
        let (t, c) = choose_template(&cat, Some(given), Some("debian12"));
        assert_eq!(t.map(|t| t.name), Some("corral-test-guest".into()));
        assert_eq!(c.reason, TemplateReason::Given);

        let (t, c) = choose_template(&cat, None, Some("debian12"));
        assert_eq!(t.map(|t| t.name), Some("debian-12".into()));
        assert_eq!(c.reason, TemplateReason::DetectedOs);
        assert_eq!(
            c.explanation,
            "template debian-12 (matched from the detected OS debian12)"
        );

        let (t, c) = choose_template(&cat, None, None);
        assert!(t.is_none());
        assert_eq!(c.reason, TemplateReason::None);

        let (t, c) = choose_template(&cat, None, Some("no-such-os1"));
        assert!(t.is_none());
        assert_eq!(c.reason, TemplateReason::None);
        assert!(c.explanation.contains("no-such-os1"), "{}", c.explanation);
    }

    #[test]
    fn osinfo_defaults_when_no_corral_template_matches() {
        // Debian's osinfo-db (a test dependency, docs/install.md) has Mageia 5; corral has
        // no template for it.
        let cat = catalog();
        let (t, c) = choose_template(&cat, None, Some("mageia5"));
        assert_eq!(t.map(|t| t.name), Some("osinfo:mageia5".into()));
        assert_eq!(c.reason, TemplateReason::OsinfoDefaults);
    }

    #[test]
    fn command_line_parts_in_order() {
        let cat = catalog();
        let t = cat.get("corral-test-guest").expect("built-in");
        let line = compose_cmdline(
            " corral.install=http://10.0.2.2:1/ ",
            Some(t),
            &ArgValues::default(),
            "no_timer_check",
        );
        assert!(
            line.starts_with("corral.install=http://10.0.2.2:1/"),
            "{line}"
        );
        assert!(line.ends_with(" no_timer_check"), "{line}");
        assert_eq!(compose_cmdline("", None, &ArgValues::default(), " "), "");
    }
}
