#!/usr/bin/python3
"""A tiny stand-in for neutron-server (stdlib only): enough for servers booted without
network (--nic none / "networks": "none"), which nova still asks neutron about (port
lookups by device_id on GET/delete, info-cache refreshes, extension and quota checks).

  GET /                      the v2.0 version document
  GET /v2.0/extensions       no extensions
  GET /v2.0/<collection>     an empty list
  GET /v2.0/quotas/<p>[/details]   everything unlimited
  GET /v2.0/<collection>/<id>      404
  DELETE anything            204
  POST / PUT / PATCH         501 (a server that wants a port must fail, not "succeed")

Every request is printed to stdout (up.sh: WORK/log/neutron-stub.out).
usage: neutron_stub.py PORT
"""
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

QUOTA_KEYS = ('network', 'subnet', 'port', 'router', 'floatingip',
              'security_group', 'security_group_rule', 'subnetpool', 'rbac_policy')


class Handler(BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'   # keep-alive, as keystoneauth expects
    server_version = 'neutron-stub'

    def log_message(self, fmt, *args):  # the default goes to stderr; we print ourselves
        pass

    def _reply(self, status, body=None):
        data = b'' if body is None else json.dumps(body).encode()
        self.send_response(status)
        if body is not None:
            self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(data)))
        self.end_headers()
        if data and self.command != 'HEAD':
            self.wfile.write(data)

    def _error(self, status, kind, msg):
        self._reply(status, {'NeutronError': {'type': kind, 'message': msg, 'detail': ''}})

    def _handle(self):
        n = int(self.headers.get('Content-Length') or 0)
        if n:
            self.rfile.read(n)
        url = urlsplit(self.path)
        print('%s %s %s' % (time.strftime('%H:%M:%S'), self.command, self.path), flush=True)
        parts = [p for p in url.path.split('/') if p]
        if parts and parts[-1].endswith('.json'):
            parts[-1] = parts[-1][:-5]
        if self.command == 'DELETE':
            return self._reply(204)
        if self.command not in ('GET', 'HEAD'):
            return self._error(501, 'NotImplemented', 'neutron stub: %s %s is not supported'
                               % (self.command, url.path))
        if not parts:
            host = self.headers.get('Host', '')
            return self._reply(200, {'versions': [{
                'id': 'v2.0', 'status': 'CURRENT',
                'links': [{'href': 'http://%s/v2.0/' % host, 'rel': 'self'}]}]})
        if parts[0] != 'v2.0':
            return self._error(404, 'NotFound', 'no such path: %s' % url.path)
        parts = parts[1:]
        if not parts:
            return self._reply(200, {'resources': []})
        coll = parts[0].replace('-', '_')
        if coll == 'quotas' and len(parts) >= 2:
            if len(parts) == 3 and parts[2] == 'details':
                return self._reply(200, {'quota': {k: {'limit': -1, 'used': 0, 'reserved': 0}
                                                   for k in QUOTA_KEYS}})
            return self._reply(200, {'quota': {k: -1 for k in QUOTA_KEYS}})
        if len(parts) == 1:
            return self._reply(200, {coll: []})
        return self._error(404, 'NotFound', '%s not found (neutron stub)' % '/'.join(parts))

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _handle


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 9696
    srv = ThreadingHTTPServer(('127.0.0.1', port), Handler)
    srv.daemon_threads = True
    print('neutron stub listening on 127.0.0.1:%d' % port, flush=True)
    srv.serve_forever()


if __name__ == '__main__':
    main()
