# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations


class ModuleDocFragment:
    # The restic repositories a module works on: named in the host command's configuration, which the host_command
    # role writes from dr_repositories (plugins/module_utils/repos/config.py MODULE_SPEC).
    DOCUMENTATION = r"""
options:
  repositories:
    description:
      - The restic repositories, by name, as the C([repositories.NAME]) tables of O(config_path) define them (the
        C(host_command) role writes them from C(dr_repositories); see docs/repositories.md). Empty takes every one.
      - Their passwords and the stores' credentials stay in the files those tables name (mode C(0600)) and reach
        restic in its environment only; they are never module options, never on a command line, never logged.
      - An unknown name is refused, and so is a O(config_path) that other users can read while it holds a secret.
    type: list
    elements: str
    default: []
  config_path:
    description:
      - The host command's configuration (C(selfhost-dr)), whose C([repositories]) and C([restic] binary) are read.
      - restic's cache is C(restic-cache) in O(state_dir).
    type: path
    default: /etc/selfhost-dr/config.toml
"""
