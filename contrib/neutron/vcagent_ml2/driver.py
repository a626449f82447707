"""The vmware_dvs ML2 mechanism driver for vcagent's DVS agent.

Binds ports with binding:vif_type "dvs" on hosts where a live agent of type "DVS agent"
reports (neutron's SimpleAgentMechanismDriverBase: alive, admin up, the segment's
physnet among the agent's configurations.bridge_mappings, segment type allowed). The
binding itself is the agent's: a bind_port call to q-agent-notifier-dvs-update.<host>
answers {key, dvs_uuid, pg_key}, which become vif_details dvs_port_key, dvs_id and
pg_id (what nova's VMware driver reads). Network changes are cast to every agent, port
updates and deletes go to the binding host's agent: networking-vsphere's protocol
(see rpc.py).
"""
import time

from neutron_lib.api.definitions import portbindings
from neutron_lib import constants as n_const
from neutron_lib.plugins.ml2 import api
from oslo_config import cfg
from oslo_log import log

from neutron.plugins.ml2.drivers import mech_agent

from vcagent_ml2 import config
from vcagent_ml2 import rpc

LOG = log.getLogger(__name__)

AGENT_TYPE_DVS = 'DVS agent'
VIF_TYPE_DVS = 'dvs'

config.register()


class VMwareDVSMechanismDriver(mech_agent.SimpleAgentMechanismDriverBase):
    """ML2 driver for the vSphere DVS agent (networking-vsphere's protocol)."""

    def __init__(self):
        self.conf = cfg.CONF[config.GROUP]
        try:
            sg = cfg.CONF.securitygroup.enable_security_group
        except (cfg.NoSuchOptError, cfg.NoSuchGroupError):
            sg = True
        super().__init__(
            AGENT_TYPE_DVS, VIF_TYPE_DVS,
            {portbindings.CAP_PORT_FILTER: bool(sg),
             portbindings.OVS_HYBRID_PLUG: bool(sg)},
            supported_vnic_types=[portbindings.VNIC_NORMAL])
        self.agents = rpc.DVSAgentAPI()
        self._failed = {}   # (port id, host) -> time of a failed bind_port call

    def initialize(self):
        LOG.info("vmware_dvs mechanism driver (vcagent) loaded: agent type %r, network "
                 "types %s, port_rpc %s", AGENT_TYPE_DVS, self.conf.network_types,
                 self.conf.port_rpc)

    # Without an L2 connectivity, ML2 refuses to bind ports that have no IP address.
    @property
    def connectivity(self):
        return portbindings.CONNECTIVITY_L2

    def get_allowed_network_types(self, agent=None):
        return tuple(self.conf.network_types)

    def get_mappings(self, agent):
        return agent['configurations'].get('bridge_mappings', {})

    def _insert_provisioning_block(self, context):
        if not self.conf.active_on_bind:
            super()._insert_provisioning_block(context)

    # ------------------------------------------------------------------ binding
    def try_to_bind_segment_for_agent(self, context, segment, agent):
        if not self.check_segment_for_agent(segment, agent):
            return False
        port = context.current
        host = agent['host']
        key = (port['id'], host)
        failed = self._failed.get(key)
        if failed is not None:
            if time.monotonic() - failed < self.conf.bind_retry_after:
                LOG.debug("not binding port %s on %s: its bind_port failed %.0f s ago",
                          port['id'], host, time.monotonic() - failed)
                return False
            self._failed.pop(key, None)
        try:
            res = self.agents.bind_port(
                context._plugin_context, host, current=port,
                network_segments=context.network.network_segments,
                network_current=context.network.current,
                timeout=self.conf.bind_timeout)
        except Exception as e:  # timeout, remote error, ...
            LOG.warning("bind_port of port %s on host %s failed: %s", port['id'], host, e)
            self._failed[key] = time.monotonic()
            return False
        if not isinstance(res, dict) or not res.get('dvs_uuid') or not res.get('pg_key'):
            LOG.warning("bind_port of port %s on host %s: no binding in the answer %r",
                        port['id'], host, res)
            self._failed[key] = time.monotonic()
            return False
        details = dict(self.vif_details)
        details.update({'dvs_id': res['dvs_uuid'], 'pg_id': res['pg_key'],
                        'dvs_port_key': res.get('key')})
        for k in ('dvs_port_group_name',):
            if res.get(k):
                details[k] = res[k]
        status = n_const.PORT_STATUS_ACTIVE if self.conf.active_on_bind else None
        context.set_binding(segment[api.ID], self.vif_type, details, status=status)
        LOG.info("port %s bound on host %s: %s", port['id'], host, details)
        return True

    # ------------------------------------------------------------------ networks
    def _segments(self, context):
        return [s for s in (context.network_segments or [])
                if s.get(api.NETWORK_TYPE) in self.conf.network_types]

    def _cast(self, what, fn, *args, **kwargs):
        try:
            fn(*args, **kwargs)
        except Exception as e:
            LOG.warning("%s to the DVS agents failed: %s", what, e)

    def create_network_postcommit(self, context):
        if not self.conf.precreate_networks:
            return
        for seg in self._segments(context):
            self._cast('create_network', self.agents.create_network,
                       context._plugin_context, context.current, seg)

    def update_network_postcommit(self, context):
        for seg in self._segments(context):
            self._cast('update_network', self.agents.update_network,
                       context._plugin_context, context.current, seg, context.original)

    def delete_network_postcommit(self, context):
        for seg in self._segments(context):
            self._cast('delete_network', self.agents.delete_network,
                       context._plugin_context, context.current, seg)

    # ------------------------------------------------------------------ ports
    def _port_rpc(self, method, context, host, segment):
        if self.conf.port_rpc == 'off' or not host:
            return
        try:
            self.agents.port_method(
                context._plugin_context, self.conf.port_rpc, host, method,
                self.conf.port_call_timeout, current=context.current,
                original=context.original, segment=segment)
        except Exception as e:
            LOG.warning("%s of port %s to host %s failed: %s", method,
                        context.current['id'], host, e)

    def update_port_postcommit(self, context):
        if context.vif_type == VIF_TYPE_DVS:
            self._port_rpc('post_update_port', context, context.host,
                           context.bottom_bound_segment)
        elif context.original_vif_type == VIF_TYPE_DVS and context.original_host:
            # Unbound (nova let the port go) or bound elsewhere (a move): the
            # agent that held it frees its DVS port, as for a deleted port.
            self._port_rpc('delete_port', context, context.original_host,
                           context.original_bottom_bound_segment)

    def delete_port_postcommit(self, context):
        if context.vif_type == VIF_TYPE_DVS:
            self._port_rpc('delete_port', context, context.host,
                           context.bottom_bound_segment)
