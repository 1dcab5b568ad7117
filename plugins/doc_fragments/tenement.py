# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations


class ModuleDocFragment:
    # Where tenement is on a host: one name and one default each, shared by every module that works on tenement
    # (plugins/module_utils/apps/registry.py TENEMENT_CLIENT_SPEC). The short names are aliases kept for the
    # modules that used them first (tenement_info, tenement_instance).
    DOCUMENTATION = r"""
options:
  tenement_server:
    description: The URL of the tenement server's API.
    type: str
    default: http://127.0.0.1:8080
    aliases: [server]
  tenement_data_dir:
    description:
      - tenement's data dir, when C(ten serve) runs with C(--data-dir) or C(TENEMENT_DATA_DIR); the API token is read
        from C(api_token) in it.
      - Otherwise the C([settings] data_dir) of C(tenement.toml) (for the modules that read it), else
        C(/var/lib/tenement).
    type: path
    aliases: [data_dir]
  tenement_ten_bin:
    description: The C(ten) command; found on E(PATH) or in C(/usr/local/bin) when not given.
    type: path
    aliases: [ten_bin]
"""

    # How ten serve is kept running and what a backup of it holds (plugins/module_utils/apps/registry.py
    # TENEMENT_SERVICE_SPEC): for the modules that stop and start tenement.
    SERVICE = r"""
options:
  tenement_config_dir:
    description: The directory holding C(tenement.toml); C(ten serve) runs in it.
    type: path
    default: /etc/tenement
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
    description:
      - Archive the TLS certificates tenement keeps (C([settings.tls] cache_dir), else C({data_dir}/acme)).
    type: bool
    default: true
  tenement_instance_data:
    description:
      - "Per service, where its instances keep their data, as path templates with tenement's placeholders
        C({data_dir}), C({name}) (the service) and C({id}), for example C({api: [{data_dir}/{id}]})."
      - A service not named here keeps its data in C({data_dir}/{name}/{id}) and in every path of its
        C([service.NAME.env]) built from C({id}) (cut after the part holding C({id})), as upstream's examples
        (C(DATA_DIR = "{data_dir}/{id}")) do.
      - Used by per-instance backups and restores; a per-instance backup that would hold nothing is refused.
    type: dict
    default: {}
"""
