"""ML2 mechanism driver "vmware_dvs" for vcagent, the Go vSphere DVS L2 agent.

See contrib/neutron/README.md.
"""
