# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations


class ModuleDocFragment:
    # Where tenement is on a host and how ten serve is kept running: one name and one default each, shared by
    # every module that works on tenement (plugins/module_utils/apps/registry.py TENEMENT_SPEC).
    DOCUMENTATION = r"""
options:
  tenement_config_dir:
    description: The directory holding C(tenement.toml); C(ten serve) runs in it.
    type: path
    default: /etc/tenement
  tenement_data_dir:
    description: tenement's data dir; by default the one C(tenement.toml) sets (C([settings] data_dir)).
    type: path
  tenement_server:
    description: The URL of the tenement server's API.
    type: str
    default: http://127.0.0.1:8080
  tenement_ten_bin:
    description: The C(ten) command.
    type: path
    default: /usr/local/bin/ten
  tenement_service_manager:
    description:
      - How C(ten serve) is kept running, for stopping and starting it. V(auto) is V(systemd) when systemd runs the
        host, else V(process).
    type: str
    choices: [auto, systemd, process]
    default: auto
  tenement_unit:
    description: The systemd unit of C(ten serve) (without C(.service)).
    type: str
    default: tenement
  tenement_pidfile:
    description: With V(process), the pidfile C(start-stop-daemon) keeps for C(ten serve).
    type: path
    default: /run/tenement.pid
  tenement_start_command:
    description: With V(process), the command (argv) that starts C(ten serve) in the background.
    type: list
    elements: str
    default: []
  tenement_acme:
    description: Archive the ACME certificates (C({data_dir}/acme)).
    type: bool
    default: true
"""
