"""The seccomp filter every container runs under: an allow list, everything else fails with EPERM.

It starts from what the usual container engines allow a container without CAP_SYS_ADMIN, and
is stricter where a function has no need:

- no new namespaces (`unshare`, `setns`, `clone` with a namespace flag; `clone3` answers ENOSYS
  so that libc falls back to `clone`, whose flags a filter can see), no mounts of any kind, no
  `pivot_root`/`chroot`;
- no kernel keyrings (`keyctl`, `add_key`, `request_key`), no `bpf`, no `perf_event_open`, no
  module loading, `kexec`, `reboot`, swap, clock setting, `syslog`, `acct` or `quotactl`;
- no `ptrace` and no reading or writing another process's memory (`process_vm_*`, `kcmp`,
  `pidfd_getfd`), which the engines allow on new kernels;
- no `io_uring` (a large kernel surface with a history of escapes; containerd dropped it too),
  no `userfaultfd`, no `personality` but the usual ones, no AF_VSOCK sockets.
"""

from __future__ import annotations

import errno
import functools
import platform
from typing import Any

from ember.errors import ExecutionError

_ALLOWED = """
accept accept4 access adjtimex alarm bind brk capget capset chdir chmod chown clock_getres
clock_gettime clock_nanosleep close close_range connect copy_file_range creat dup dup2 dup3
epoll_create epoll_create1 epoll_ctl epoll_pwait epoll_pwait2 epoll_wait eventfd eventfd2 execve
execveat exit exit_group faccessat faccessat2 fadvise64 fallocate fanotify_mark fchdir fchmod
fchmodat fchmodat2 fchown fchownat fcntl fdatasync fgetxattr flistxattr flock fork fremovexattr
fsetxattr fstat fstatfs fsync ftruncate futex futex_waitv futimesat getcpu getcwd getdents
getdents64 getegid geteuid getgid getgroups getitimer getpeername getpgid getpgrp getpid getppid
getpriority getrandom getresgid getresuid getrlimit get_robust_list getrusage getsid getsockname
getsockopt get_thread_area gettid gettimeofday getuid getxattr inotify_add_watch inotify_init
inotify_init1 inotify_rm_watch io_cancel ioctl io_destroy io_getevents io_pgetevents ioprio_get
ioprio_set io_setup io_submit kill landlock_add_rule landlock_create_ruleset
landlock_restrict_self lchown lgetxattr link linkat listen listxattr llistxattr lremovexattr lseek
lsetxattr lstat madvise membarrier memfd_create mincore mkdir mkdirat mknod mknodat mlock mlock2
mlockall mmap mprotect mq_getsetattr mq_notify mq_open mq_timedreceive mq_timedsend mq_unlink
mremap msgctl msgget msgrcv msgsnd msync munlock munlockall munmap name_to_handle_at nanosleep
newfstatat open openat openat2 pause pidfd_open pidfd_send_signal pipe pipe2 pkey_alloc pkey_free
pkey_mprotect poll ppoll prctl pread64 preadv preadv2 prlimit64 process_mrelease pselect6 pwrite64
pwritev pwritev2 read readahead readlink readlinkat readv recvfrom recvmmsg recvmsg
remap_file_pages removexattr rename renameat renameat2 restart_syscall rmdir rseq rt_sigaction
rt_sigpending rt_sigprocmask rt_sigqueueinfo rt_sigreturn rt_sigsuspend rt_sigtimedwait
rt_tgsigqueueinfo sched_getaffinity sched_getattr sched_getparam sched_get_priority_max
sched_get_priority_min sched_getscheduler sched_rr_get_interval sched_setaffinity sched_setattr
sched_setparam sched_setscheduler sched_yield seccomp select semctl semget semop semtimedop
sendfile sendmmsg sendmsg sendto setfsgid setfsuid setgid setgroups setitimer setpgid setpriority
setregid setresgid setresuid setreuid setrlimit set_robust_list setsid setsockopt set_thread_area
set_tid_address setuid setxattr shmat shmctl shmdt shmget shutdown sigaltstack signalfd signalfd4
socketpair splice stat statfs statx symlink symlinkat sync sync_file_range syncfs sysinfo tee
tgkill time timer_create timer_delete timer_getoverrun timer_gettime timer_settime timerfd_create
timerfd_gettime timerfd_settime times tkill truncate umask uname unlink unlinkat utime utimensat
utimes vfork vmsplice wait4 waitid write writev
cachestat futex_requeue futex_wait futex_wake map_shadow_stack mseal
"""
ALLOWED = _ALLOWED.split()

# The calls of one architecture that the others lack.
ARCH_ALLOWED = {"x86_64": ["arch_prctl", "modify_ldt"], "aarch64": []}
# Only the host's own system call table: the 32-bit compatibility entry points (a classic path
# to kernel bugs) fail like any call not allowed.
ARCHITECTURES = {"x86_64": "SCMP_ARCH_X86_64", "aarch64": "SCMP_ARCH_AARCH64"}

# Namespace flags of clone(2): a clone that asks for any of them is refused.
_CLONE_NEW_FLAGS = (
    0x00020000  # CLONE_NEWNS
    | 0x02000000  # CLONE_NEWCGROUP
    | 0x04000000  # CLONE_NEWUTS
    | 0x08000000  # CLONE_NEWIPC
    | 0x10000000  # CLONE_NEWUSER
    | 0x20000000  # CLONE_NEWPID
    | 0x40000000  # CLONE_NEWNET
)
_AF_VSOCK = 40
# personality(2) values programs use: Linux, with address randomisation off (gdb, setarch -R),
# and the query 0xffffffff.
_PERSONALITIES = (0x0, 0x0008, 0x20000, 0x20008, 0xFFFFFFFF)


@functools.cache
def profile() -> dict[str, Any]:
    """The `linux.seccomp` section of an OCI spec (the same for every container: made once;
    callers only serialize it)."""
    machine = platform.machine()
    if machine not in ARCHITECTURES:
        raise ExecutionError(f"no seccomp profile for the {machine} architecture")
    names = ALLOWED + ARCH_ALLOWED[machine]
    rules: list[dict[str, Any]] = [{"names": names, "action": "SCMP_ACT_ALLOW"}]
    rules.append(
        {
            "names": ["clone"],
            "action": "SCMP_ACT_ALLOW",
            "args": [
                {"index": 0, "value": _CLONE_NEW_FLAGS, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}
            ],
        }
    )
    rules.append({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOSYS})
    rules.append(
        {
            "names": ["socket"],
            "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": _AF_VSOCK, "op": "SCMP_CMP_NE"}],
        }
    )
    rules += [
        {
            "names": ["personality"],
            "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": value, "op": "SCMP_CMP_EQ"}],
        }
        for value in _PERSONALITIES
    ]
    return {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": errno.EPERM,
        "architectures": [ARCHITECTURES[machine]],
        "syscalls": rules,
    }
