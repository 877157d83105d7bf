// Write an XVA with @xen-orchestra/xva's own writers (ova.xml and 1 MiB blocks with
// .xxhash files), fed raw disk images. Usage:
//   node write-xva.mjs OUT.xva '{"name":"vm","nCpus":2,"memory":536870912,"firmware":"uefi",
//                              "disks":["a.raw"],"macs":["aa:bb:cc:dd:ee:ff"]}'
import fs from 'node:fs'
import tar from 'tar-stream'
import writeOvaXml from '@xen-orchestra/xva/_writeOvaXml.mjs'
import writeDisk from '@xen-orchestra/xva/_writeDisk.mjs'

const [out, json] = process.argv.slice(2)
const opts = JSON.parse(json)
const pack = tar.pack()
const done = new Promise((resolve, reject) => {
  const file = fs.createWriteStream(out)
  file.on('finish', resolve)
  file.on('error', reject)
  pack.pipe(file)
})
const vhds = opts.disks.map(path => ({
  footer: { currentSize: fs.statSync(path).size },
  rawContent: async () => fs.createReadStream(path),
}))
const vdis = opts.disks.map((path, i) => ({
  name_label: `disk ${i}`,
  name_description: '',
  virtual_size: fs.statSync(path).size,
}))
await writeOvaXml(
  pack,
  {
    name_label: opts.name,
    name_description: opts.description ?? '',
    memory: opts.memory,
    nCpus: opts.nCpus,
    firmware: opts.firmware,
    vdis,
    vhds,
    networks: (opts.macs ?? []).map(mac => ({ macAddress: mac, isGenerated: false })),
  },
  { sr: { name_label: 'sr' }, network: { name_label: opts.network ?? 'lan', bridge: 'xenbr0' } }
)
for (const vhd of vhds) {
  await writeDisk(pack, vhd, vhd.ref)
}
pack.finalize()
await done
