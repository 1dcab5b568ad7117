#!/usr/bin/python
# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: migrate_transfer
short_description: A migration's sets sent straight from the old server to the new one, over TLS
version_added: 0.4.0
description:
  - Role M(selfhost.dr.migrate) uses it when O(step=credentials) on the controller, O(step=serve) and O(step=stop) on
    the old server, O(step=fetch) on the new one, for C(migrate_transfer=direct) or C(auto) (docs/migrate.md).
  - C(credentials) - on the controller - a self-signed certificate, its key and a random token made for one transfer
    (with the C(cryptography) package Ansible depends on; the servers need only Python's standard library).
  - C(serve) - the O(files) opened (never through a link) and served by a process left running on a port the kernel
    gives, only to a client that sends the token over TLS 1.2 or newer with that certificate; each file once. The
    process exits when every file was sent, after O(timeout) seconds, or at C(stop).
  - C(fetch) - the files fetched in order from the first of O(hosts) that answers on O(port), trusting only that
    certificate, into O(dir) under O(names), each written under a temporary name and renamed when whole; the set is
    checked against its C(.sha256).
  - C(stop) - the serving process of O(port) ended if it still runs (that very process - its pid and start time).
author:
  - selfhost.dr developers
attributes:
  check_mode:
    support: partial
    description: C(serve) opens the files as the real run would (refusing a link or anything but a regular file) and
      serves nothing; C(fetch) opens where the files go and fetches nothing; C(stop) says whether a server of that
      port runs; C(credentials) makes them as the real run does (it changes nothing).
  diff_mode:
    support: none
  idempotent:
    support: none
options:
  step:
    description: The step.
    type: str
    choices: [credentials, serve, fetch, stop]
    required: true
  files:
    description: With C(serve) - the files to send, in order.
    type: list
    elements: path
  names:
    description: With C(fetch) - the names to give the files, in the order they are served.
    type: list
    elements: str
  hosts:
    description: With C(fetch) - the old server's addresses, tried in order.
    type: list
    elements: str
  port:
    description: With C(fetch) and C(stop) - the port C(serve) returned.
    type: int
  cert:
    description: With C(serve) and C(fetch) - the transfer's certificate (PEM).
    type: str
  key:
    description: With C(serve) - the certificate's key (PEM).
    type: str
  token:
    description: With C(serve) and C(fetch) - the transfer's token.
    type: str
  dir:
    description: With C(fetch) - where the files go on the new server.
    type: path
    default: /var/backups/selfhost-dr/migrate
  timeout:
    description: With C(serve) - seconds the serving process waits for its files to be fetched. With C(fetch) -
      seconds to wait for a connection to each address.
    type: float
    default: 3600
extends_documentation_fragment:
  - selfhost.dr.state_dir
seealso:
  - module: selfhost.dr.migrate_source
  - module: selfhost.dr.migrate_target
"""

EXAMPLES = r"""
- name: Credentials for one transfer (on the controller)
  selfhost.dr.migrate_transfer:
    step: credentials
  delegate_to: localhost
  register: keys
  no_log: true
"""

RETURN = r"""
port:
  description: With C(serve) - the port the files are served on.
  returned: with serve
  type: int
addresses:
  description: With C(serve) - the old server's addresses (its default routes' source addresses, then its name's).
  returned: with serve
  type: list
  elements: str
host:
  description: With C(fetch) - the address the files came from.
  returned: with fetch
  type: str
bytes:
  description: With C(fetch) - bytes received.
  returned: with fetch
  type: int
seconds:
  description: How long the step took.
  returned: always
  type: float
"""

import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.selfhost.dr.plugins.module_utils._common import Error
from ansible_collections.selfhost.dr.plugins.module_utils.engine import journal, transfer
from ansible_collections.selfhost.dr.plugins.module_utils.engine.journal import STATE_DIR_SPEC


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            step=dict(type="str", required=True, choices=["credentials", "serve", "fetch", "stop"]),
            files=dict(type="list", elements="path"),
            names=dict(type="list", elements="str"),
            hosts=dict(type="list", elements="str"),
            port=dict(type="int"),
            cert=dict(type="str"),
            key=dict(type="str", no_log=True),
            token=dict(type="str", no_log=True),
            dir=dict(type="path", default="/var/backups/selfhost-dr/migrate"),
            timeout=dict(type="float", default=3600.0),
            **STATE_DIR_SPEC,
        ),
        required_if=[
            ("step", "serve", ["files", "cert", "key", "token"]),
            ("step", "fetch", ["names", "hosts", "port", "cert", "token"]),
            ("step", "stop", ["port"]),
        ],
        supports_check_mode=True,
    )
    p = module.params
    step = p["step"]
    where = f"{journal.state_dir(p['state_dir'])}/migrate"
    t0 = time.monotonic()
    try:
        if step == "credentials":
            done: dict[str, object] = {"changed": False, **transfer.credentials()}
        elif module.check_mode:
            done = {"changed": True, **transfer.check(step, p["files"] or [], p["dir"], where, p["port"] or 0)}
        elif step == "serve":
            done = {"changed": True, **transfer.serve(p["files"], p["cert"], p["key"], p["token"], where,
                                                      timeout=p["timeout"])}  # fmt: skip
        elif step == "fetch":
            done = {"changed": True, **transfer.fetch(p["hosts"], p["port"], p["cert"], p["token"], p["names"],
                                                      p["dir"], timeout=min(p["timeout"], 10.0))}  # fmt: skip
        else:
            done = {"changed": transfer.stop(where, p["port"])}
    except Error as exc:
        module.fail_json(msg=str(exc), step=step)
    except OSError as exc:
        module.fail_json(msg=f"the {step} failed: {exc.filename + ': ' if exc.filename else ''}{exc.strerror or exc}")
    done.setdefault("seconds", round(time.monotonic() - t0, 3))
    module.exit_json(step=step, **done)


if __name__ == "__main__":
    main()
