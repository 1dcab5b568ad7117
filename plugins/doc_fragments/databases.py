# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations


class ModuleDocFragment:
    """What every backup that snapshots databases takes about them."""

    DOCUMENTATION = r"""
options:
  row_counts_max_size:
    description:
      - Every table's rows of each database are counted at backup and recorded in the manifest, for a restore and a
        drill to compare exactly. Databases larger than this many bytes are not counted (their restore then checks
        their bytes and C(integrity_check) only); V(0) counts every database, whatever its size.
      - Counting costs little beside the copy (it reads what the copy just read); set a limit for huge tables on a
        slow disk.
    type: int
    default: 0
"""
