#!/usr/bin/env python3
"""Independent XVA writer in the style of xapi's own export: ova.xml with typed XML-RPC values
(<string>, <int>, <boolean>), VBD/VIF refs listed on the VM, and blocks with SHA-1 `.checksum`
files. The last block is written even when it is zero, and it may be shorter than 1 MiB.

usage: make_xva.py OUT.xva DISK.raw [--pv] [--weight N] [--mac M]
"""
import hashlib, io, os, sys, tarfile

def val(v):
    if isinstance(v, bool):
        return "<value><boolean>%d</boolean></value>" % v
    if isinstance(v, int):
        return "<value><string>%d</string></value>" % v
    if isinstance(v, list):
        return "<value><array><data>%s</data></array></value>" % "".join(val(x) for x in v)
    if isinstance(v, dict):
        return "<value><struct>%s</struct></value>" % "".join(
            "<member><name>%s</name>%s</member>" % (k, val(x)) for k, x in v.items())
    return "<value><string>%s</string></value>" % v

def main():
    out, disk = sys.argv[1], sys.argv[2]
    pv = "--pv" in sys.argv
    weight = int(sys.argv[sys.argv.index("--weight") + 1]) if "--weight" in sys.argv else None
    mac = sys.argv[sys.argv.index("--mac") + 1] if "--mac" in sys.argv else "02:00:00:00:00:07"
    size = os.path.getsize(disk)
    vm = {
        "name_label": "xapi vm", "name_description": "made by make_xva.py",
        "is_a_template": False, "is_a_snapshot": False, "is_control_domain": False,
        "memory_static_max": 768 << 20, "memory_dynamic_max": 768 << 20,
        "VCPUs_max": 3, "VCPUs_at_startup": 3,
        "VCPUs_params": {"weight": str(weight)} if weight else {},
        "HVM_boot_policy": "" if pv else "BIOS order",
        "HVM_boot_params": {"order": "dc"},
        "domain_type": "pv" if pv else "hvm",
        "PV_bootloader": "pygrub" if pv else "",
        "platform": {"viridian": "false"},
        "other_config": {"auto_poweron": "true"},
        "VBDs": ["Ref:10", "Ref:11"], "VIFs": ["Ref:20"],
    }
    objs = [
        {"class": "VM", "id": "Ref:1", "snapshot": vm},
        {"class": "VBD", "id": "Ref:10", "snapshot": {"VM": "Ref:1", "VDI": "Ref:5", "type": "Disk", "userdevice": "0", "empty": False}},
        {"class": "VBD", "id": "Ref:11", "snapshot": {"VM": "Ref:1", "VDI": "OpaqueRef:NULL", "type": "CD", "userdevice": "3", "empty": True}},
        {"class": "VDI", "id": "Ref:5", "snapshot": {"virtual_size": size, "name_label": "root"}},
        {"class": "VIF", "id": "Ref:20", "snapshot": {"VM": "Ref:1", "network": "Ref:30", "MAC": mac, "device": "0"}},
        {"class": "network", "id": "Ref:30", "snapshot": {"name_label": "Pool-wide network associated with eth0", "bridge": "xenbr0"}},
    ]
    xml = val({"version": {"export_vsn": 2, "xapi_major": 1}, "objects": objs}).encode()
    with tarfile.open(out, "w", format=tarfile.USTAR_FORMAT) as t:
        def add(name, data):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
        add("ova.xml", xml)
        with open(disk, "rb") as f:
            i, last = 0, (size - 1) // (1 << 20)
            while True:
                block = f.read(1 << 20)
                if not block:
                    break
                if block.count(0) != len(block) or i == last:
                    name = "Ref:5/%08d" % i
                    add(name, block)
                    add(name + ".checksum", hashlib.sha1(block).hexdigest().encode())
                i += 1

main()
