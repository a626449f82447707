"""Options of the vmware_dvs mechanism driver (group [ml2_vmware_dvs])."""
from oslo_config import cfg

GROUP = 'ml2_vmware_dvs'

OPTS = [
    cfg.ListOpt('network_types', default=['vlan'],
                help='Segment types the driver binds and tells the agents about '
                     '(vlan, flat).'),
    cfg.BoolOpt('precreate_networks', default=True,
                help='Cast create_network to the agents when a network is created '
                     '(as networking-vsphere); else the agent creates the port '
                     'group lazily at bind_port.'),
    cfg.IntOpt('bind_timeout', default=30, min=1,
               help='Timeout (s) of the bind_port call to the host\'s agent.'),
    cfg.IntOpt('bind_retry_after', default=30, min=0,
               help='After a failed bind_port call, do not offer the same port '
                    'to the same host again for this long (s): ML2 retries a '
                    'binding up to 10 times per request.'),
    cfg.StrOpt('port_rpc', default='cast', choices=['cast', 'call', 'fanout', 'off'],
               help='How post_update_port / delete_port reach the agent: cast or '
                    'call to q-agent-notifier-dvs-update.<binding host> '
                    '(networking-vsphere made calls), a fanout cast to every '
                    'agent, or not at all.'),
    cfg.IntOpt('port_call_timeout', default=10, min=1,
               help='Timeout (s) of post_update_port / delete_port with '
                    'port_rpc = call.'),
    cfg.BoolOpt('active_on_bind', default=False,
                help='Do not wait for the agent\'s update_device_up: the port is '
                     'ACTIVE once bound (networking-vsphere\'s behaviour). '
                     'Default: the standard L2 agent provisioning block.'),
]


def register(conf=cfg.CONF):
    conf.register_opts(OPTS, GROUP)
    return conf[GROUP]
