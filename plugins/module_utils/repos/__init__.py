# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""restic repositories: the history and the off-site copies (``restic`` the command, run with argv lists, secrets in
the environment). ``restic`` wraps one repository."""
