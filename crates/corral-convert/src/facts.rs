//! Gathering what the plan needs, inside the appliance: the disk's layout from `blkid` on
//! each partition and logical volume (cheaper here than libguestfs's own inspection, which
//! mounts everything and loads Augeas: about 20 s under TCG), the root found by mounting
//! each Linux file system read-only and looking for `/etc/fstab`, the guest's mounts from
//! that fstab, and then one shell script run by the guest's own `/bin/sh` that prints every
//! file and fact the plan reads ([`FACTS_SCRIPT`], parsed by [`parse_facts`]).

use crate::guestfish::{Guestfish, GuestfishError};
use crate::plan::*;
use crate::ConvertError;

fn lines(s: &str) -> Vec<String> {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// The disk's partitions, logical volumes and what is on each.
pub(crate) async fn read_layout(g: &mut Guestfish) -> Result<Layout, ConvertError> {
    let devices = lines(&g.call("list-devices", &[]).await?);
    let Some(disk) = devices.first().cloned() else {
        return Err(ConvertError::Appliance(GuestfishError::Failed {
            command: "list-devices".into(),
            message: "the appliance sees no disk".into(),
        }));
    };
    let size: u64 = g
        .call("blockdev-getsize64", &[&disk])
        .await?
        .trim()
        .parse()
        .unwrap_or(0);
    let partitions = lines(&g.call("list-partitions", &[]).await?);
    let lvs = lines(&g.call("lvs", &[]).await?);
    let mut layout = Layout {
        disk: disk.clone(),
        disk_sectors: size / 512,
        lvs: lvs.clone(),
        ..Default::default()
    };
    // blkid fails on a device where it finds nothing: that is "nothing known".
    let whole = g.call("blkid", &[&disk]).await.unwrap_or_default();
    layout.table = whole_table(&whole);
    layout.devices.push(parse_blkid(&disk, &whole));
    for d in partitions.iter().chain(&lvs) {
        let out = g.call("blkid", &[d]).await.unwrap_or_default();
        layout.devices.push(parse_blkid(d, &out));
    }
    if !lvs.is_empty() {
        // Which volume group each physical volume belongs to (PV UUIDs without dashes).
        let plain = |u: &str| u.replace('-', "").to_ascii_lowercase();
        for vg in lines(&g.call("vgs", &[]).await?) {
            let uuids: Vec<String> = lines(&g.call("vgpvuuids", &[&vg]).await?)
                .iter()
                .map(|u| plain(u))
                .collect();
            for d in &layout.devices {
                if d.fstype == "LVM2_member" && uuids.contains(&plain(&d.uuid)) {
                    layout.pvs.push((d.device.clone(), vg.clone()));
                }
            }
        }
    }
    Ok(layout)
}

fn whole_table(blkid: &str) -> String {
    blkid
        .lines()
        .find_map(|l| l.strip_prefix("PTTYPE: "))
        .unwrap_or("")
        .trim()
        .to_string()
}

async fn read_if_exists(g: &mut Guestfish, path: &str) -> Result<Option<String>, ConvertError> {
    if g.call("exists", &[path]).await?.trim() != "true" {
        return Ok(None);
    }
    Ok(g.call("cat", &[path]).await.ok())
}

/// Mount each Linux file system read-only in turn and choose the root.
pub(crate) async fn find_root(
    g: &mut Guestfish,
    layout: &Layout,
) -> Result<Candidate, ConvertError> {
    let mut candidates = Vec::new();
    let mut unreadable: Vec<(String, GuestfishError)> = Vec::new();
    for dev in root_candidates(layout) {
        if let Err(e) = g.call("mount-ro", &[&dev, "/"]).await {
            unreadable.push((dev, e));
            continue;
        }
        let fstab = read_if_exists(g, "/etc/fstab").await?;
        let os_release = match read_if_exists(g, "/etc/os-release").await? {
            Some(t) => Some(t),
            None => read_if_exists(g, "/usr/lib/os-release").await?,
        };
        g.call("umount-all", &[]).await?;
        candidates.push(Candidate {
            device: dev,
            fstab,
            os_release,
        });
    }
    match choose_root(layout, &candidates) {
        Ok(i) => Ok(candidates.swap_remove(i)),
        Err(Refusal::NoLinux { .. }) if !unreadable.is_empty() => {
            let (device, source) = unreadable.swap_remove(0);
            Err(ConvertError::Unreadable {
                what: "a Linux file system, which may be the root".into(),
                device,
                source,
            })
        }
        Err(r) => Err(r.into()),
    }
}

/// Mount the guest's file systems read-write where its fstab says.
pub(crate) async fn mount_guest(g: &mut Guestfish, mounts: &MountPlan) -> Result<(), ConvertError> {
    for (mp, dev) in &mounts.mounts {
        if let Err(source) = g.call("mount", &[dev, mp]).await {
            return Err(ConvertError::Unreadable {
                what: if mp == "/" {
                    "the root file system".into()
                } else {
                    format!("{mp} in the guest's fstab")
                },
                device: dev.clone(),
                source,
            });
        }
    }
    Ok(())
}

/// Files the plan reads (globs are expanded by the guest's shell).
const FILES: &[&str] = &[
    "/etc/os-release",
    "/usr/lib/os-release",
    "/etc/fstab",
    "/etc/crypttab",
    "/etc/default/grub",
    "/etc/network/interfaces",
    "/etc/network/interfaces.d/*",
    "/etc/initramfs-tools/modules",
    "/etc/initramfs-tools/conf.d/resume",
    "/etc/udev/rules.d/70-persistent-net.rules",
    "/etc/systemd/network/*.network",
    "/etc/systemd/network/*.link",
    "/etc/netplan/*.yaml",
    "/boot/grub/device.map",
];

const TOOLS: &[&str] = &[
    "update-initramfs",
    "update-grub",
    "grub-mkconfig",
    "grub-install",
    "systemctl",
    "ifup",
    "NetworkManager",
];

const PATHS: &[&str] = &[
    "/usr/lib/grub/i386-pc",
    "/usr/lib/grub/x86_64-efi",
    "/lib/systemd/systemd-networkd",
    "/usr/lib/systemd/systemd-networkd",
    "/lib/systemd/systemd-udevd",
    "/usr/lib/systemd/systemd-udevd",
    "/usr/share/initramfs-tools",
];

/// The facts script: `B` is a boundary no file contains, `DISK` the appliance's disk. Every
/// record is one line `B KIND ARGS`; a file's content follows its line, ended by `\nB end`.
pub const FACTS_SCRIPT: &str = r#"
export PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C
for f in @FILES@; do
	[ -f "$f" ] || continue
	printf '%s file %s\n' "$B" "$f"; cat "$f"; printf '\n%s end\n' "$B"
done
for t in @TOOLS@; do
	for d in /usr/sbin /usr/bin /sbin /bin; do
		if [ -x "$d/$t" ]; then printf '%s tool %s %s\n' "$B" "$t" "$d/$t"; break; fi
	done
done
for p in @PATHS@; do
	[ -e "$p" ] && printf '%s exists %s\n' "$B" "$p"
done
for k in /boot/vmlinuz-*; do
	[ -e "$k" ] || continue
	v=${k#/boot/vmlinuz-}
	m=/lib/modules/$v
	for mod in virtio_blk virtio_net virtio_pci; do
		s=no
		if grep -qs "/$mod\.ko" "$m/modules.builtin"; then s=yes
		elif [ -d "$m/kernel" ] && [ -n "$(find "$m/kernel" -name "$mod.ko*" 2>/dev/null | head -n 1)" ]; then s=yes
		fi
		printf '%s kernel %s %s %s\n' "$B" "$v" "$mod" "$s"
	done
done
for w in /etc/systemd/system/*.wants/*; do
	if [ -L "$w" ] || [ -e "$w" ]; then printf '%s unit %s\n' "$B" "$w"; fi
done
if [ -d /boot/efi/EFI ]; then
	find /boot/efi/EFI -maxdepth 2 -type f -iname '*.efi' 2>/dev/null | while read -r f; do printf '%s efi %s\n' "$B" "$f"; done
fi
if head -c 512 "$DISK" 2>/dev/null | grep -aq GRUB; then printf '%s mbr grub\n' "$B"; fi
printf '%s done\n' "$B"
"#;

/// The facts script for this boundary and disk.
pub fn facts_script(boundary: &str, disk: &str) -> String {
    let body = FACTS_SCRIPT
        .replace("@FILES@", &FILES.join(" "))
        .replace("@TOOLS@", &TOOLS.join(" "))
        .replace("@PATHS@", &PATHS.join(" "));
    format!("B='{boundary}'\nDISK='{disk}'\n{body}")
}

/// Parse what [`FACTS_SCRIPT`] printed. `None` when its last record is missing (the script
/// did not run to its end).
pub fn parse_facts(boundary: &str, out: &str) -> Option<GuestFiles> {
    let mut f = GuestFiles::default();
    let head = format!("{boundary} ");
    let end = format!("\n{boundary} end\n");
    let mut rest = out;
    let mut done = false;
    while let Some(i) = rest.find(&head) {
        rest = &rest[i + head.len()..];
        let (line, after) = rest.split_once('\n').unwrap_or((rest, ""));
        let mut w = line.splitn(2, ' ');
        let kind = w.next().unwrap_or("");
        let arg = w.next().unwrap_or("").to_string();
        rest = after;
        match kind {
            "file" => {
                let j = rest.find(&end)?;
                f.files.insert(arg, rest[..j].to_string());
                rest = &rest[j + end.len()..];
            }
            "tool" => {
                if let Some((t, p)) = arg.split_once(' ') {
                    f.tools.insert(t.to_string(), p.to_string());
                }
            }
            "exists" => {
                f.exists.insert(arg);
            }
            "kernel" => {
                let v: Vec<&str> = arg.split(' ').collect();
                if let [k, m, s] = v.as_slice() {
                    f.kernels
                        .entry(k.to_string())
                        .or_default()
                        .insert(m.to_string(), *s == "yes");
                }
            }
            "unit" => f.units.push(arg),
            "efi" => f.efi.push(arg),
            "mbr" => f.mbr_grub = arg == "grub",
            "done" => done = true,
            _ => {}
        }
    }
    done.then_some(f)
}

/// Run the facts script in the mounted guest.
pub(crate) async fn read_guest_files(
    g: &mut Guestfish,
    disk: &str,
) -> Result<GuestFiles, ConvertError> {
    let boundary = format!("@@corral-facts-{}", uuid::Uuid::new_v4().simple());
    let out = g.call("sh", &[&facts_script(&boundary, disk)]).await?;
    parse_facts(&boundary, &out).ok_or_else(|| {
        ConvertError::Appliance(GuestfishError::Failed {
            command: "sh (reading the guest's configuration)".into(),
            message: "the script did not run to its end".into(),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_output_is_parsed_whatever_the_files_hold() {
        let b = "@@B";
        let out = "@@B file /etc/fstab\n/dev/sda1 / ext4 defaults 0 1\n\n@@B end\n\
@@B file /etc/empty\n\n@@B end\n\
@@B file /etc/noeol\nlast line\n@@B end\n\
@@B tool update-initramfs /usr/sbin/update-initramfs\n\
@@B exists /usr/lib/grub/i386-pc\n\
@@B kernel 6.1.0-50-amd64 virtio_blk yes\n\
@@B kernel 6.1.0-50-amd64 virtio_net no\n\
@@B unit /etc/systemd/system/multi-user.target.wants/networking.service\n\
@@B efi /boot/efi/EFI/debian/grubx64.efi\n\
@@B mbr grub\n\
@@B done\n";
        let f = parse_facts(b, out).unwrap();
        assert_eq!(f.files["/etc/fstab"], "/dev/sda1 / ext4 defaults 0 1\n");
        assert_eq!(f.files["/etc/empty"], "");
        assert_eq!(f.files["/etc/noeol"], "last line");
        assert_eq!(f.tools["update-initramfs"], "/usr/sbin/update-initramfs");
        assert!(f.exists.contains("/usr/lib/grub/i386-pc"));
        assert!(f.kernels["6.1.0-50-amd64"]["virtio_blk"]);
        assert!(!f.kernels["6.1.0-50-amd64"]["virtio_net"]);
        assert_eq!(f.units.len(), 1);
        assert_eq!(f.efi, ["/boot/efi/EFI/debian/grubx64.efi"]);
        assert!(f.mbr_grub);
        assert_eq!(parse_facts(b, "@@B exists /x\n"), None, "cut short");
    }

    #[test]
    fn the_script_names_its_boundary_and_disk() {
        let s = facts_script("@@X", "/dev/sda");
        assert!(s.starts_with("B='@@X'\nDISK='/dev/sda'\n"));
        assert!(s.contains("for f in /etc/os-release /usr/lib/os-release /etc/fstab"));
        assert!(!s.contains('@') || !s.contains("@FILES@"));
    }
}
