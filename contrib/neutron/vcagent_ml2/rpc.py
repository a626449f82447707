"""Server -> DVS agent RPC, networking-vsphere's DVSClientAPI protocol (version 1.1).

Exchange: neutron's control_exchange. Topic: q-agent-notifier-dvs-update, as a fanout
for the network casts, and q-agent-notifier-dvs-update.<host> for the calls to one
host's agent:

  create_network(current, segment)            fanout cast
  update_network(current, segment, original)  fanout cast
  delete_network(current, segment)            fanout cast
  bind_port(current, network_segments, network_current) -> {key, dvs_uuid, pg_key}
                                              call to the port's host
  post_update_port(current, original, segment)   to the binding host (see port_rpc)
  delete_port(current, original, segment)        to the binding host (see port_rpc)
"""
import oslo_messaging
from neutron_lib.agent import topics
from neutron_lib import rpc as n_rpc

DVS = 'dvs'
VERSION = '1.1'
TOPIC = topics.get_topic_name(topics.AGENT, DVS, topics.UPDATE)  # q-agent-notifier-dvs-update


def host_topic(host):
    return topics.get_topic_name(topics.AGENT, DVS, topics.UPDATE, host)


class DVSAgentAPI(object):

    def __init__(self):
        self._client = None

    @property
    def client(self):
        # created on first use: after neutron's rpc init and in the worker process
        if self._client is None:
            target = oslo_messaging.Target(topic=TOPIC, version='1.0')
            self._client = n_rpc.get_client(target)
        return self._client

    def _fanout(self):
        return self.client.prepare(version=VERSION, topic=TOPIC, fanout=True)

    def _host(self, host, timeout):
        return self.client.prepare(version=VERSION, topic=host_topic(host), timeout=timeout)

    # networks: fanout casts
    def create_network(self, context, current, segment):
        self._fanout().cast(context, 'create_network', current=current, segment=segment)

    def update_network(self, context, current, segment, original):
        self._fanout().cast(context, 'update_network', current=current, segment=segment,
                            original=original)

    def delete_network(self, context, current, segment):
        self._fanout().cast(context, 'delete_network', current=current, segment=segment)

    # ports
    def bind_port(self, context, host, current, network_segments, network_current, timeout):
        return self._host(host, timeout).call(
            context, 'bind_port', current=current, network_segments=network_segments,
            network_current=network_current)

    def port_method(self, context, mode, host, method, timeout, **kwargs):
        """post_update_port / delete_port: mode cast, call (to host) or fanout."""
        if mode == 'fanout':
            return self._fanout().cast(context, method, **kwargs)
        cctxt = self._host(host, timeout)
        if mode == 'call':
            return cctxt.call(context, method, **kwargs)
        return cctxt.cast(context, method, **kwargs)
