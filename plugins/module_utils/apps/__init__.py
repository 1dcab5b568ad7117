# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One file per application: its facts, the paths to archive, stop and start, the per-unit procedure,
post-restore fix-ups and the health check. ``engine/`` drives them; ``sets/`` never imports them.
"""
