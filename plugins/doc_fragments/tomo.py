# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations


class ModuleDocFragment:
    # Where Tomo is on a host: one name and one default each (plugins/module_utils/apps/registry.py TOMO_SPEC).
    DOCUMENTATION = r"""
options:
  tomo_database:
    description: Tomo's database; by default C(/var/lib/tomo/tomo.db), then C(~tomo/.tomo) and C(~/.tomo).
    type: path
  tomo_service:
    description: Tomo's systemd service (its name in messages with O(tomo_service_manager=process)).
    type: str
    default: tomo.service
  tomo_service_manager:
    description:
      - How Tomo is kept running, for stopping and starting it. V(systemd) (a packaged install), V(process) (a plain
        process kept by C(start-stop-daemon) and O(tomo_pidfile), started by O(tomo_start_command), on a host or in a
        container without systemd), or V(auto) (V(systemd) when systemd runs the host, else V(process)).
    type: str
    default: systemd
    choices: [auto, systemd, process]
  tomo_pidfile:
    description: With V(process), the pidfile C(start-stop-daemon) keeps for Tomo.
    type: path
    default: /run/tomo.pid
  tomo_start_command:
    description: With V(process), the command (argv) that starts Tomo in the background.
    type: list
    elements: str
    default: []
  tomo_environment:
    description:
      - The file holding C(TOMO_MASTER_PASSWORD), without which restored server credentials cannot be decrypted.
        Archived when it exists, never printed.
    type: path
    default: /etc/tomo/environment
  tomo_known_hosts:
    description: The service user's SSH C(known_hosts), archived when it exists.
    type: path
    default: /var/lib/tomo/.ssh/known_hosts
  tomo_categories:
    description: The categories of the JSON document written beside every set.
    type: list
    elements: str
    default: [servers, applications, settings, users, preferences, repositories]
  tomo_version:
    description: Tomo's version, when its database does not record it.
    type: str
  tomo_settle:
    description: Seconds Tomo must keep running after a start for the start to count as done.
    type: float
    default: 2.0
"""
