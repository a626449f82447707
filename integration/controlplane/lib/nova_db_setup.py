#!/usr/bin/python3
"""Set up nova's databases in one process. Each nova-manage run spends 4-8 s of CPU just
importing nova (eventlet's monkey patching, pkg_resources); five of them were the
slowest part of up.sh on a 2-core machine.

Does, with nova-manage's own command methods (every step is idempotent):
  nova-manage api_db sync
  nova-manage cell_v2 map_cell0 --database_connection CELL0_URL
  nova-manage cell_v2 create_cell --name cell1     (skipped if cell1 exists)
  nova-manage db sync                              (cell0 through its mapping, then cell1)

usage: nova_db_setup.py NOVA_CONF CELL0_URL
"""
import sys
import time

from nova.cmd import manage  # first: nova.cmd applies eventlet's monkey patching
from nova import config
from nova import context
from nova import objects
from oslo_log import log as logging


def timed(what, fn, *args, **kwargs):
    t = time.time()
    rc = fn(*args, **kwargs)
    if rc not in (0, None):
        sys.exit('%s failed (%r)' % (what, rc))
    print('%s: done in %.1f s' % (what, time.time() - t), flush=True)


def main():
    conf_file, cell0_url = sys.argv[1], sys.argv[2]
    config.parse_args(['nova-manage', '--config-file', conf_file])
    logging.setup(manage.CONF, 'nova')
    objects.register_all()
    cells = manage.CellV2Commands()
    timed('api_db sync', manage.ApiDbCommands().sync)
    timed('map_cell0', cells.map_cell0, database_connection=cell0_url)
    names = [c.name for c in objects.CellMappingList.get_all(context.get_admin_context())]
    if 'cell1' not in names:
        timed('create_cell cell1', cells.create_cell, name='cell1')
    timed('db sync', manage.DbCommands().sync)


if __name__ == '__main__':
    main()
