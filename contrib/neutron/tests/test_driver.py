"""Unit tests of the vmware_dvs driver without neutron-server (Debian's python3-neutron).

    cd contrib/neutron && PYTHONDONTWRITEBYTECODE=1 PYTHONPATH=. /usr/bin/python3 -m unittest tests/test_driver.py
"""
import unittest
from unittest import mock

from vcagent_ml2 import driver

SEG = {'id': 'seg1', 'network_type': 'vlan', 'physical_network': 'physnet1',
       'segmentation_id': 101, 'network_id': 'net1'}
AGENT = {'host': 'h1', 'alive': True, 'agent_type': 'DVS agent',
         'configurations': {'bridge_mappings': {'physnet1': 'dvs0'}}}


def port_context(host='h1'):
    ctx = mock.Mock()
    ctx.current = {'id': 'p1', 'binding:host_id': host, 'binding:vnic_type': 'normal',
                   'fixed_ips': [], 'device_owner': 'compute:nova', 'status': 'DOWN'}
    ctx.host = host
    ctx.network.current = {'id': 'net1'}
    ctx.network.network_segments = [SEG]
    ctx.segments_to_bind = [SEG]
    ctx.host_agents.return_value = [AGENT]
    return ctx


class DriverTest(unittest.TestCase):

    def setUp(self):
        self.d = driver.VMwareDVSMechanismDriver()
        self.d.agents = mock.Mock()

    def test_bind(self):
        self.d.agents.bind_port.return_value = {'key': '7', 'dvs_uuid': 'u', 'pg_key': 'dvportgroup-1'}
        ctx = port_context()
        self.d.bind_port(ctx)
        args = self.d.agents.bind_port.call_args
        self.assertEqual(args.args[1], 'h1')
        self.assertEqual(args.kwargs['network_segments'], [SEG])
        seg_id, vif_type, details = ctx.set_binding.call_args.args
        self.assertEqual((seg_id, vif_type), ('seg1', 'dvs'))
        self.assertEqual(details['dvs_id'], 'u')
        self.assertEqual(details['pg_id'], 'dvportgroup-1')
        self.assertEqual(details['dvs_port_key'], '7')
        self.assertEqual(details['connectivity'], 'l2')

    def test_physnet_not_mapped(self):
        ctx = port_context()
        ctx.host_agents.return_value = [dict(AGENT, configurations={'bridge_mappings': {'other': 'd'}})]
        self.d.bind_port(ctx)
        self.d.agents.bind_port.assert_not_called()
        ctx.set_binding.assert_not_called()

    def test_dead_agent(self):
        ctx = port_context()
        ctx.host_agents.return_value = [dict(AGENT, alive=False)]
        self.d.bind_port(ctx)
        self.d.agents.bind_port.assert_not_called()

    def test_failure_is_remembered(self):
        self.d.agents.bind_port.side_effect = RuntimeError('timeout')
        for _ in range(3):
            ctx = port_context()
            self.d.bind_port(ctx)
            ctx.set_binding.assert_not_called()
        self.assertEqual(self.d.agents.bind_port.call_count, 1)

    def test_bad_answer(self):
        self.d.agents.bind_port.return_value = {'key': '7'}
        ctx = port_context()
        self.d.bind_port(ctx)
        ctx.set_binding.assert_not_called()

    def test_network_casts(self):
        ctx = mock.Mock(current={'id': 'net1'}, original={'id': 'net1', 'name': 'a'},
                        network_segments=[SEG, dict(SEG, id='s2', network_type='vxlan')])
        self.d.create_network_postcommit(ctx)
        self.d.update_network_postcommit(ctx)
        self.d.delete_network_postcommit(ctx)
        self.assertEqual(self.d.agents.create_network.call_count, 1)   # vlan only
        self.d.agents.update_network.assert_called_once_with(
            ctx._plugin_context, ctx.current, SEG, ctx.original)
        self.d.agents.delete_network.assert_called_once_with(ctx._plugin_context, ctx.current, SEG)

    def test_port_update_and_delete(self):
        ctx = mock.Mock(vif_type='dvs', host='h1', bottom_bound_segment=SEG,
                        current={'id': 'p1'}, original={'id': 'p1'})
        self.d.update_port_postcommit(ctx)
        self.d.delete_port_postcommit(ctx)
        methods = [c.args[3] for c in self.d.agents.port_method.call_args_list]
        self.assertEqual(methods, ['post_update_port', 'delete_port'])
        self.assertEqual(self.d.agents.port_method.call_args.args[1:3], ('cast', 'h1'))
        other = mock.Mock(vif_type='ovs', host='h1', original_vif_type='ovs')
        self.d.update_port_postcommit(other)
        self.assertEqual(self.d.agents.port_method.call_count, 2)

    def test_unbinding_frees_the_port_on_the_old_host(self):
        ctx = mock.Mock(vif_type='unbound', host='', original_vif_type='dvs',
                        original_host='h1', original_bottom_bound_segment=SEG,
                        current={'id': 'p1'}, original={'id': 'p1'})
        self.d.update_port_postcommit(ctx)
        call = self.d.agents.port_method.call_args
        self.assertEqual(call.args[1:4], ('cast', 'h1', 'delete_port'))
        self.assertEqual(call.kwargs['segment'], SEG)



class RPCTest(unittest.TestCase):

    def setUp(self):
        from vcagent_ml2 import rpc
        self.api = rpc.DVSAgentAPI()
        self.api._client = mock.Mock()
        self.prep = self.api._client.prepare

    def test_topics(self):
        self.api.create_network('ctx', {'id': 'n'}, SEG)
        self.prep.assert_called_with(version='1.1', topic='q-agent-notifier-dvs-update', fanout=True)
        self.prep.return_value.cast.assert_called_with('ctx', 'create_network', current={'id': 'n'}, segment=SEG)
        self.api.bind_port('ctx', 'h1', current={}, network_segments=[SEG], network_current={}, timeout=30)
        self.prep.assert_called_with(version='1.1', topic='q-agent-notifier-dvs-update.h1', timeout=30)
        self.prep.return_value.call.assert_called_with('ctx', 'bind_port', current={},
                                                       network_segments=[SEG], network_current={})

    def test_port_modes(self):
        c = self.prep.return_value
        self.api.port_method('ctx', 'cast', 'h1', 'delete_port', 10, current={})
        c.cast.assert_called_once()
        self.api.port_method('ctx', 'call', 'h1', 'delete_port', 10, current={})
        c.call.assert_called_once()
        self.prep.assert_called_with(version='1.1', topic='q-agent-notifier-dvs-update.h1', timeout=10)
        self.api.port_method('ctx', 'fanout', 'h1', 'delete_port', 10, current={})
        self.prep.assert_called_with(version='1.1', topic='q-agent-notifier-dvs-update', fanout=True)


if __name__ == '__main__':
    unittest.main()
