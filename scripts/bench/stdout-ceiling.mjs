// Reference points for the stdout throughput ratio, measured in the same run:
// how fast the guest can move bytes at all when something consumes them.
//
//  - guest copy: dd of a tmpfs file to /dev/null, one kernel copy per byte
//    and no clear (the floor is one clear and no copy);
//  - guest pipe: `dd | dd of=/dev/null` inside the guest, the cost of any
//    pipe-based stdout before a single byte leaves the VM;
//  - virtio port: `dd` straight into a virtio-serial port whose host end is
//    /dev/null (a second virtio-serial device added through a SANDBOX_QEMU
//    wrapper, bench only): the ceiling of any design built on virtio-serial,
//    since it has one guest copy and no host consumer at all;
//  - pipe to port: `dd | dd of=<port>` in that VM, the guest side of any design
//    where the process writes a pipe and init moves it to the port (three
//    copies), still with no host consumer.
import { chmodSync, writeFileSync } from "node:fs";
import { join } from "node:path";

const timed = async (lane, mib, cmd) => {
  const r = await lane.exec("sh", ["-c", `s=$(date +%s%N); ${cmd}; e=$(date +%s%N); echo $((e-s))`]);
  if (r.exitCode !== 0) throw new Error(`bench command failed (${r.exitCode}): ${cmd}: ${r.stderr}`);
  return mib / (Number(r.stdout.trim().split("\n").pop()) / 1e9);
};

const dd = (mib) => `dd if=/dev/zero bs=1M count=${mib} status=none`;

/** MiB/s of the guest's own pipe between two processes, on an existing lane. */
export async function guestPipeMiBs(lane, mib, rounds) {
  const out = [];
  for (let i = 0; i < rounds; i++) out.push(await timed(lane, mib, `${dd(mib)} | dd of=/dev/null bs=1M status=none`));
  return out;
}

/**
 * MiB/s of one kernel copy and nothing else: dd reads a file on the guest's
 * tmpfs into its buffer (copy_to_user) and writes to /dev/null. Set against
 * the floor (one kernel clear, no copy) it says what a single copy of every
 * byte costs under this accelerator.
 */
export async function guestCopyMiBs(lane, rounds) {
  const mib = 128; // fits the default tmpfs of a 512 MiB guest
  await lane.exec("sh", ["-c", `${dd(mib)} of=/tmp/bench-copy`]);
  try {
    const out = [];
    for (let i = 0; i < rounds; i++) out.push(await timed(lane, mib, `dd if=/tmp/bench-copy bs=1M of=/dev/null status=none`));
    return out;
  } finally {
    await lane.exec("rm", ["-f", "/tmp/bench-copy"]);
  }
}

/**
 * MiB/s of dd straight into a discarding virtio-serial port, with the guest's
 * dd to /dev/null in the same VM. Null when the backend is not qemu.
 */
export async function virtioPortCeiling({ defineSandbox, rootfs, image, resources, qemu, work, mib, rounds }) {
  const wrapper = join(work, "qemu-with-discard-port");
  writeFileSync(
    wrapper,
    `#!/bin/sh\nexec '${qemu}' "$@" -device virtio-serial-pci,id=benchser ` +
      `-chardev file,id=benchnull,path=/dev/null -device virtserialport,bus=benchser.0,chardev=benchnull,name=bench.discard\n`,
  );
  chmodSync(wrapper, 0o755);
  const saved = process.env.SANDBOX_QEMU;
  process.env.SANDBOX_QEMU = wrapper;
  let lane;
  try {
    lane = await defineSandbox({ rootfs: rootfs.builtIn(image), resources }).boot();
  } finally {
    if (saved === undefined) delete process.env.SANDBOX_QEMU;
    else process.env.SANDBOX_QEMU = saved;
  }
  try {
    const find = await lane.exec("sh", ["-c", "for p in /sys/class/virtio-ports/*; do [ \"$(cat $p/name)\" = bench.discard ] && echo /dev/${p##*/}; done"]);
    const port = find.stdout.trim();
    if (!port) throw new Error(`the bench.discard port did not appear in the guest: ${find.stderr}`);
    const portMiBs = [];
    const nullMiBs = [];
    const pipeToPortMiBs = [];
    for (let i = 0; i < rounds; i++) {
      portMiBs.push(await timed(lane, mib, `${dd(mib)} of=${port}`));
      nullMiBs.push(await timed(lane, mib, `${dd(mib)} of=/dev/null`));
      // What init does with a process's pipe, with nobody on the host: read up
      // to 256 KiB, write it to the port.
      pipeToPortMiBs.push(await timed(lane, mib, `${dd(mib)} | dd bs=256K of=${port} status=none`));
    }
    return { portMiBs, nullMiBs, pipeToPortMiBs };
  } finally {
    await lane.close();
  }
}
