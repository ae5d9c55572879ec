// Reads what the harness measures about a process tree straight from /proc:
// CPU time (utime + stime, in clock ticks) and resident memory (VmRSS, VmHWM).
// The "tree" is a process plus all of its live descendants; CPU of children
// that already exited is included through the root's cutime + cstime.

import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';

let clkTck;

/** Clock ticks per second, as `getconf CLK_TCK` reports (almost always 100). */
export function clockTicks() {
  if (clkTck === undefined) {
    try {
      clkTck = Number.parseInt(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim(), 10);
    } catch {
      clkTck = Number.NaN;
    }
    if (!Number.isFinite(clkTck) || clkTck <= 0) clkTck = 100;
  }
  return clkTck;
}

/**
 * Fields of /proc/<pid>/stat after the command name. The name is in
 * parentheses and may itself contain spaces and parentheses, so split after
 * the last ')'. Returns undefined when the process is gone.
 */
function statFields(pid) {
  let text;
  try {
    text = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
  const close = text.lastIndexOf(')');
  if (close < 0) return undefined;
  // rest[0] is field 3 (state); field n is rest[n - 3].
  return text.slice(close + 2).split(' ');
}

/** Map ppid -> [pid], from one scan of /proc. */
function childrenMap() {
  const map = new Map();
  let entries = [];
  try {
    entries = readdirSync('/proc');
  } catch {
    return map;
  }
  for (const name of entries) {
    if (!/^\d+$/.test(name)) continue;
    const f = statFields(name);
    if (!f) continue;
    const ppid = Number(f[1]);
    const pid = Number(name);
    let list = map.get(ppid);
    if (!list) {
      list = [];
      map.set(ppid, list);
    }
    list.push(pid);
  }
  return map;
}

/** The pid and all of its live descendants. */
export function processTree(pid) {
  const kids = childrenMap();
  const out = [];
  const stack = [pid];
  while (stack.length > 0) {
    const p = stack.pop();
    out.push(p);
    for (const c of kids.get(p) ?? []) stack.push(c);
  }
  return out;
}

/**
 * utime + stime of the tree in clock ticks, plus the root's cutime + cstime
 * (children it has reaped). Children reaped by descendants are counted in the
 * descendants' own cutime/cstime, included too.
 */
export function treeCpuTicks(pid) {
  let ticks = 0;
  for (const p of processTree(pid)) {
    const f = statFields(p);
    if (!f) continue;
    // Fields 14..17: utime, stime, cutime, cstime.
    ticks += Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14]);
  }
  return ticks;
}

export function treeCpuSeconds(pid) {
  return treeCpuTicks(pid) / clockTicks();
}

/** A `Vm*` line of /proc/<pid>/status in kB, or 0 when the process is gone. */
export function statusKb(pid, field) {
  let text;
  try {
    text = readFileSync(`/proc/${pid}/status`, 'utf8');
  } catch {
    return 0;
  }
  const m = new RegExp(`^${field}:\\s+(\\d+)\\s+kB`, 'm').exec(text);
  return m ? Number(m[1]) : 0;
}

/** Sum of VmRSS over the tree, in kB. */
export function treeRssKb(pid) {
  let kb = 0;
  for (const p of processTree(pid)) kb += statusKb(p, 'VmRSS');
  return kb;
}

/**
 * Resets VmHWM (peak RSS) of the tree to the current RSS (Linux >= 4.0,
 * `echo 5 > /proc/<pid>/clear_refs`). Needs to own the process or be root.
 * Returns false when the kernel or permissions do not allow it.
 */
export function resetPeakRss(pid) {
  let ok = true;
  for (const p of processTree(pid)) {
    try {
      writeFileSync(`/proc/${p}/clear_refs`, '5');
    } catch {
      ok = false;
    }
  }
  return ok;
}

/** Sum of VmHWM over the tree, in kB. */
export function treePeakRssKb(pid) {
  let kb = 0;
  for (const p of processTree(pid)) kb += statusKb(p, 'VmHWM');
  return kb;
}

/** Samples the tree's RSS every `everyMs` until stopped; stop() returns the maximum in kB. */
export function sampleRss(pid, everyMs = 50) {
  let max = treeRssKb(pid);
  const timer = setInterval(() => {
    const kb = treeRssKb(pid);
    if (kb > max) max = kb;
  }, everyMs);
  return {
    stop() {
      clearInterval(timer);
      const kb = treeRssKb(pid);
      return Math.max(kb, max);
    },
  };
}

export function alive(pid) {
  return statFields(pid) !== undefined;
}
