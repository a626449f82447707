package vcenter_test

import (
	"context"
	"fmt"
	"log"

	"github.com/rs/zerolog"

	"github.com/vcagent/vcagent/drivers/vcenter"
)

// Example runs the embedded simulator, logs in and reports each cluster's
// capacity.
func Example() {
	ctx := context.Background()
	sim, err := vcenter.StartSimulator(ctx, vcenter.SimulatorConfig{Clusters: 2, HostsPerCluster: 3, Datastores: 2})
	if err != nil {
		log.Fatal(err)
	}
	defer sim.Close()

	s, err := vcenter.New(vcenter.Config{URL: sim.URL().String(), Insecure: true}, zerolog.Nop())
	if err != nil {
		log.Fatal(err)
	}
	if err := s.Login(ctx); err != nil {
		log.Fatal(err)
	}
	defer func() { _ = s.Logout(ctx) }()

	clusters, err := s.Clusters(ctx)
	if err != nil {
		log.Fatal(err)
	}
	for _, c := range clusters {
		r := c.Resources(nil)
		fmt.Printf("%s/%s: %d hosts, %d vCPUs (max %d per host), %d MB (max %d per host), disk %d/%d GB free on %d GB of datastores\n",
			c.Datacenter, c.Name, r.Hosts, r.VCPUs, r.MaxVCPUsPerHost, r.MemoryMB, r.MaxMemoryMBPerHost,
			r.DiskFreeGB, r.DiskTotalGB, r.DatastoresTotalGB)
	}
	fmt.Println("round trips:", s.Calls()["RetrievePropertiesEx"]+s.Calls()["CreateContainerView"]+s.Calls()["DestroyView"])
	// Output:
	// DC0/DC0_C0: 3 hosts, 6 vCPUs (max 2 per host), 12285 MB (max 4095 per host), disk 4300/6144 GB free on 10240 GB of datastores
	// DC0/DC0_C1: 3 hosts, 6 vCPUs (max 2 per host), 12285 MB (max 4095 per host), disk 4300/6144 GB free on 10240 GB of datastores
	// round trips: 3
}
