"""CUDA toolkits side by side under /usr/local, the /usr/local/cuda link, and shell set-up.

    toolkit.py  the toolkit trees under a root and what their nvcc reports
    link.py     read, switch (atomic, locked) and roll back the link
    checks.py   CudaFacts gathered once; cuda.link, cuda.nvcc_path, cuda.driver judged from them
    shell.py    `cuda shell-init`
    install.py  `cuda install` (13.x from NVIDIA's wheels; the repository command for older ones)

The names below are the package's public surface (`cuda.read_link`, `cuda.plan_switch`, ...).
"""
from provisioner.cuda.checks import (CudaFacts, NvccOnPath, check_link, check_nvcc_path, check_toolkit_driver,
                                     gather, judge_link, judge_nvcc_path)
from provisioner.cuda.link import (LINK_STATES, LOCK_NAME, NEW_LINK_PREFIX, RECORD_NAME, STATE_DIR, LinkState,
                                   SwitchPlan, apply, plan_rollback, plan_switch, read_link, read_record)
from provisioner.cuda.shell import (BEGIN, END, REWRITE_MARK, SHELLS, ShellInitPlan, apply_shell_init,
                                    default_shell, plan_shell_init, rc_file, shell_init)
from provisioner.cuda.toolkit import (LINK, LOCAL, NVCC_TIMEOUT, Toolkit, command_line, find_toolkit,
                                      nvcc_version, parse_nvcc_version, read_toolkit, resolve_under, system_path,
                                      toolkits, which_nvcc, writable)

__all__ = [
    "CudaFacts", "NvccOnPath", "check_link", "check_nvcc_path", "check_toolkit_driver", "gather", "judge_link",
    "judge_nvcc_path", "LINK_STATES", "LOCK_NAME", "NEW_LINK_PREFIX", "RECORD_NAME", "STATE_DIR", "LinkState",
    "SwitchPlan", "apply", "plan_rollback", "plan_switch", "read_link", "read_record", "BEGIN", "END",
    "REWRITE_MARK", "SHELLS", "ShellInitPlan", "apply_shell_init", "default_shell", "plan_shell_init",
    "rc_file", "shell_init", "LINK", "LOCAL", "NVCC_TIMEOUT", "Toolkit", "command_line", "find_toolkit",
    "nvcc_version", "parse_nvcc_version", "read_toolkit", "resolve_under", "system_path", "toolkits",
    "which_nvcc", "writable",
]
