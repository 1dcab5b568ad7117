# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Procedures for any application: backup and restore (stop, archive or swap, start, check, commit or roll
back), and the on-host journal that makes a restore resumable. Used by the modules and by ``selfhost-dr``.
"""
