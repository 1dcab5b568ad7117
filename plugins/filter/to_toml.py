# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The filter ``selfhost.dr.to_toml``: a mapping as a TOML document."""

from __future__ import annotations

DOCUMENTATION = r"""
name: to_toml
short_description: Write a mapping as a TOML document
version_added: 0.2.0
author: selfhost.dr contributors
description:
  - Writes O(_input) as a TOML document that Python's C(tomllib) reads back as exactly O(_input).
  - Nested mappings become C([table.sub]) sections, mappings inside lists inline tables; keys are written bare when
    they are letters, digits, C(_) and C(-), quoted otherwise.
  - Values may be strings, integers (64-bit), finite floats, booleans, dates, times and lists of them.
  - Anything TOML cannot say (C(None), a key that is not a string, NaN, a string that is not Unicode text) fails with
    one sentence naming where it is; leave a key out rather than setting it to C(None).
options:
  _input:
    description: The document, a mapping.
    type: dict
    required: true
  document:
    description: What the document is called in error messages (for example C(tenement.toml)).
    type: str
    default: a TOML document
"""

EXAMPLES = r"""
- name: Write tenement.toml
  ansible.builtin.copy:
    content: "{{ {'settings': {'data_dir': '/var/lib/tenement', 'tls': {'enabled': false}}} | selfhost.dr.to_toml }}"
    dest: /etc/tenement/tenement.toml
    mode: "0644"
"""

RETURN = r"""
_value:
  description: The TOML document, ending with a newline (empty for an empty mapping).
  type: str
"""

from collections.abc import Mapping

from ansible.errors import AnsibleFilterError

from ansible_collections.selfhost.dr.plugins.module_utils.toml_writer import TomlError, dumps


def to_toml(data: Mapping[str, object], document: str = "a TOML document") -> str:
    try:
        return dumps(data, str(document))
    except TomlError as exc:
        raise AnsibleFilterError(str(exc)) from None


class FilterModule:
    def filters(self) -> dict[str, object]:
        return {"to_toml": to_toml}
