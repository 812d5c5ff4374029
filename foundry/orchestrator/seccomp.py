"""The seccomp filter of the sandbox: the kernel calls a build command has no use for and an
attacker would want, refused with EPERM before the kernel looks at them.

bubblewrap loads a compiled classic-BPF program from a file descriptor (`--seccomp FD`) and
sets no_new_privs first, so the filter holds for the command and everything it starts.
Refused: tracing other processes (ptrace, process_vm_*, pidfd_getfd, kcmp), the kernel
keyring, eBPF, perf events, userfaultfd, io_uring, mounts and the new mount API, module
and kexec loading, namespaces (unshare, setns, clone with a CLONE_NEW* flag; clone3 gets
ENOSYS so libc falls back to clone, where the flags can be read), swap, reboot, the clock,
the kernel log, accounting, quotas, I/O ports and file handles (open_by_handle_at walks
past a bind mount). Another architecture's calls (x32, i386 on x86-64) are refused whole:
their numbers differ and would slip past the table.

The numbers are the kernel's for x86-64 (checked on this machine by the tests) and for
arm64 (the generic table, not run here). Elsewhere there is no filter and docs/sandbox.md
says so.
"""

from __future__ import annotations

import errno
import os
import struct

# struct sock_filter {u16 code; u8 jt; u8 jf; u32 k}; offsets into struct seccomp_data.
_LOAD_WORD = 0x20  # BPF_LD | BPF_W | BPF_ABS
_JUMP_EQ = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_JUMP_GE = 0x35  # BPF_JMP | BPF_JGE | BPF_K
_JUMP_SET = 0x45  # BPF_JMP | BPF_JSET | BPF_K
_RETURN = 0x06  # BPF_RET | BPF_K
_NR, _ARCH, _ARG0_LOW = 0, 4, 16
_ALLOW = 0x7FFF0000
_ERRNO = 0x00050000
# CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET and NEWTIME.
_NAMESPACE_FLAGS = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000
_NAMESPACE_FLAGS |= 0x10000000 | 0x20000000 | 0x40000000 | 0x00000080
_X32_BIT = 0x40000000

_X86_64 = {
    "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "pidfd_getfd": 438,
    "kcmp": 312, "keyctl": 250, "add_key": 248, "request_key": 249, "bpf": 321,
    "perf_event_open": 298, "userfaultfd": 323, "io_uring_setup": 425, "io_uring_enter": 426,
    "io_uring_register": 427, "mount": 165, "umount2": 166, "pivot_root": 155,
    "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432,
    "fspick": 433, "mount_setattr": 442, "init_module": 175, "finit_module": 313,
    "delete_module": 176, "kexec_load": 246, "kexec_file_load": 320, "unshare": 272,
    "setns": 308, "swapon": 167, "swapoff": 168, "reboot": 169, "settimeofday": 164,
    "clock_settime": 227, "clock_adjtime": 305, "adjtimex": 159, "syslog": 103, "acct": 163,
    "quotactl": 179, "iopl": 172, "ioperm": 173, "open_by_handle_at": 304,
    "name_to_handle_at": 303, "lookup_dcookie": 212, "vhangup": 153,
    "clone": 56, "clone3": 435,
}  # fmt: skip
_ARM64 = {
    "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271, "pidfd_getfd": 438,
    "kcmp": 272, "keyctl": 219, "add_key": 217, "request_key": 218, "bpf": 280,
    "perf_event_open": 241, "userfaultfd": 282, "io_uring_setup": 425, "io_uring_enter": 426,
    "io_uring_register": 427, "mount": 40, "umount2": 39, "pivot_root": 41,
    "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432,
    "fspick": 433, "mount_setattr": 442, "init_module": 105, "finit_module": 273,
    "delete_module": 106, "kexec_load": 104, "kexec_file_load": 294, "unshare": 97,
    "setns": 268, "swapon": 224, "swapoff": 225, "reboot": 142, "settimeofday": 170,
    "clock_settime": 112, "clock_adjtime": 266, "adjtimex": 171, "syslog": 116, "acct": 89,
    "quotactl": 60, "open_by_handle_at": 265, "name_to_handle_at": 264,
    "lookup_dcookie": 18, "vhangup": 58, "clone": 220, "clone3": 435,
}  # fmt: skip
# The calls refused: every one in the tables but clone and clone3, which are judged apart.
REFUSED = tuple(name for name in _X86_64 if name not in ("clone", "clone3"))
# machine name -> (AUDIT_ARCH_*, numbers, whether x32 numbers share the architecture)
_ARCHITECTURES = {
    "x86_64": (0xC000003E, _X86_64, True),
    "aarch64": (0xC00000B7, _ARM64, False),
    "arm64": (0xC00000B7, _ARM64, False),
}


def _assemble(lines: list[tuple[str | None, int, int, str | None, str | None]]) -> bytes:
    """Classic BPF from (label, code, k, jump-if-true label, jump-if-false label) lines; a
    missing jump label means the next line. Jumps only go forward, at most 255 lines."""
    where = {label: index for index, (label, *_rest) in enumerate(lines) if label}
    out = []
    for index, (_label, code, k, if_true, if_false) in enumerate(lines):
        jt = where[if_true] - index - 1 if if_true else 0
        jf = where[if_false] - index - 1 if if_false else 0
        assert 0 <= jt <= 255 and 0 <= jf <= 255, "a jump out of BPF's reach"
        out.append(struct.pack("=HBBI", code, jt, jf, k))
    return b"".join(out)


def program(machine: str | None = None) -> bytes | None:
    """The compiled filter for this machine's architecture, or None where foundry has no
    table for it."""
    found = _ARCHITECTURES.get(machine or os.uname().machine)
    if found is None:
        return None
    arch, numbers, has_x32 = found
    lines: list[tuple[str | None, int, int, str | None, str | None]] = [
        (None, _LOAD_WORD, _ARCH, None, None),
        (None, _JUMP_EQ, arch, None, "deny"),  # another architecture's numbering
        (None, _LOAD_WORD, _NR, None, None),
    ]
    if has_x32:
        lines.append((None, _JUMP_GE, _X32_BIT, "deny", None))
    lines += [(None, _JUMP_EQ, numbers[name], "deny", None) for name in REFUSED if name in numbers]
    lines += [
        (None, _JUMP_EQ, numbers["clone3"], "enosys", None),
        (None, _JUMP_EQ, numbers["clone"], "flags", "allow"),
        ("allow", _RETURN, _ALLOW, None, None),
        ("flags", _LOAD_WORD, _ARG0_LOW, None, None),
        (None, _JUMP_SET, _NAMESPACE_FLAGS, "deny", "allow_clone"),
        ("allow_clone", _RETURN, _ALLOW, None, None),
        ("deny", _RETURN, _ERRNO | errno.EPERM, None, None),
        ("enosys", _RETURN, _ERRNO | errno.ENOSYS, None, None),
    ]
    return _assemble(lines)
