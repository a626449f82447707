//go:build integration

package integration

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vcagent/vcagent/drivers/vcenter"
	"github.com/vcagent/vcagent/integration/cp"
)

// simulatorFaultsEnv makes the re-executed simulator (serveSimulator) sit
// behind serveFaultProxy, which injects vCenter faults by server name.
const simulatorFaultsEnv = "VCAGENT_TEST_SIMULATOR_FAULTS"

// createVMNamed matches the VM name of a CreateVM_Task request: the agent
// creates the VM as "<display name> (<uuid>)" after copying its root disk
// into the instance's directory, so a fault there leaves files to clean up.
var createVMNamed = regexp.MustCompile(`<CreateVM_Task\b[\s\S]*?<name>([^<]*)</name>`)

// serveFaultProxy serves HTTPS in front of the simulator at target and
// returns its URL (with target's credentials). It fails CreateVM_Task with
// a vSphere fault for VMs of servers named "failalways-*", and for those
// named "failonce-*" the first time only; everything else passes through.
func serveFaultProxy(target *url.URL) *url.URL {
	backend := &url.URL{Scheme: target.Scheme, Host: target.Host}
	proxy := httputil.NewSingleHostReverseProxy(backend)
	proxy.Transport = &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}} //nolint:gosec // the local simulator's self-signed certificate
	var mu sync.Mutex
	failed := map[string]bool{}
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost && r.URL.Path == "/sdk" {
			body, _ := io.ReadAll(r.Body)
			r.Body = io.NopCloser(bytes.NewReader(body))
			if m := createVMNamed.FindSubmatch(body); m != nil {
				name := string(m[1])
				mu.Lock()
				fail := strings.HasPrefix(name, "failalways-") || strings.HasPrefix(name, "failonce-") && !failed[name]
				failed[name] = true
				mu.Unlock()
				if fail {
					w.Header().Set("Content-Type", "text/xml; charset=utf-8")
					w.WriteHeader(http.StatusInternalServerError)
					fmt.Fprint(w, `<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><soapenv:Fault><faultcode>ServerFaultCode</faultcode><faultstring>injected fault: the host ran out of resources</faultstring><detail><InsufficientResourcesFaultFault xmlns="urn:vim25" xsi:type="InsufficientResourcesFault"></InsufficientResourcesFaultFault></detail></soapenv:Fault></soapenv:Body></soapenv:Envelope>`)
					return
				}
			}
		}
		proxy.ServeHTTP(w, r)
	}))
	u, _ := url.Parse(srv.URL + target.Path)
	u.User = target.User
	return u
}

// TestFailedBuildIsRescheduledOrErrors boots servers through the real nova
// API onto two agents (one cluster each, in one availability zone) whose
// vCenter fails a step of the VM's creation: a build that fails once is
// rescheduled by conductor to the other host and becomes ACTIVE there; one
// that fails everywhere ends in ERROR with nova's fault. Either way no VM,
// disk or allocation of a failed attempt is left behind.
func TestFailedBuildIsRescheduledOrErrors(t *testing.T) {
	ctrl := controlPlane(t)
	vcEnv, vc := testVCenter(t, simulatorFaultsEnv+"=1")
	ctx := context.Background()
	suffix := fmt.Sprint(time.Now().Unix() % 100000)
	hosts := map[string]string{"vcagent-rsA-" + suffix: "DC0_C0", "vcagent-rsB-" + suffix: "DC0_C1"}
	for host, cluster := range hosts {
		startAgent(t, append(append(computeAgentEnv(ctrl, host), vcEnv...), "VCAGENT_CLUSTERS="+cluster)...)
	}
	for host := range hosts {
		waitServiceState(t, ctrl, host, "up", 90*time.Second)
	}
	if out, err := ctrl.NovaManage(ctx, "cell_v2", "discover_hosts"); err != nil {
		t.Fatalf("discover_hosts: %v\n%s", err, out)
	}
	// An availability zone of just these two hosts keeps the scheduler off
	// other tests' hosts.
	az := "vcagent-az-" + suffix
	agg, err := ctrl.NovaPOST(ctx, "/os-aggregates", map[string]any{"aggregate": map[string]any{"name": az, "availability_zone": az}})
	if err != nil {
		t.Fatal(err)
	}
	aggID := agg["aggregate"].(map[string]any)["id"]
	for host := range hosts {
		if _, err := ctrl.NovaPOST(ctx, fmt.Sprintf("/os-aggregates/%v/action", aggID), map[string]any{"add_host": map[string]any{"host": host}}); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		for host := range hosts {
			_, _ = ctrl.NovaPOST(ctx, fmt.Sprintf("/os-aggregates/%v/action", aggID), map[string]any{"remove_host": map[string]any{"host": host}})
		}
		_, _ = ctrl.NovaDELETE(ctx, fmt.Sprintf("/os-aggregates/%v", aggID))
	})
	image := uploadFlatImage(t, ctrl)
	boot := func(name string) string {
		t.Helper()
		created, err := ctrl.NovaPOST(ctx, "/servers", map[string]any{"server": map[string]any{
			"name": name, "imageRef": image, "flavorRef": "42", "networks": "none", "availability_zone": az,
		}})
		if err != nil {
			t.Fatal(err)
		}
		return created["server"].(map[string]any)["id"].(string)
	}

	// Fails on the first host, rescheduled to the second.
	once := boot("failonce-" + suffix)
	s := waitServer(t, ctrl, once, 180*time.Second, func(s map[string]any) bool {
		return s["status"] == "ERROR" || settled("ACTIVE")(s)
	})
	if s["status"] != "ACTIVE" {
		t.Fatalf("failonce server: %v %v, want ACTIVE on the alternate host", s["status"], s["fault"])
	}
	builtOn := fmt.Sprint(s["OS-EXT-SRV-ATTR:host"])
	buildHosts := buildEventHosts(t, once)
	if len(buildHosts) != 2 || buildHosts[1] != builtOn || buildHosts[0] == builtOn {
		t.Errorf("build events on hosts %v, ACTIVE on %s: want a first attempt elsewhere, then this host", buildHosts, builtOn)
	}
	vm, err := vc.FindVMByInstanceUUID(ctx, once)
	if err != nil || vm.PowerState != vcenter.PowerStateOn || vm.Name != "failonce-"+suffix+" ("+once+")" {
		t.Errorf("VM of the rescheduled server: %+v %v", vm, err)
	}

	// Fails on both hosts: conductor runs out of alternates.
	always := boot("failalways-" + suffix)
	// conductor records the fault just after the ERROR state.
	s = waitServer(t, ctrl, always, 180*time.Second, func(s map[string]any) bool { return s["status"] == "ERROR" && s["fault"] != nil })
	fault, _ := s["fault"].(map[string]any)
	if msg := fmt.Sprint(fault["message"]); !strings.Contains(msg, "Exceeded maximum number of retries") {
		t.Errorf("ERROR server's fault %v, want nova's retries-exhausted fault", fault)
	}
	if vm, err := vc.FindVMByInstanceUUID(ctx, always); err == nil {
		t.Errorf("the failed build left VM %s (%s) behind", vm.Ref.Value, vm.Name)
	}
	noInstanceFiles(t, vc, always)
	noAllocations(t, ctrl, always)

	for _, id := range []string{once, always} {
		if _, err := ctrl.NovaDELETE(ctx, "/servers/"+id); err != nil {
			t.Error(err)
		}
	}
	waitGone(t, ctrl, once)
	if _, err := vc.FindVMByInstanceUUID(ctx, once); err == nil {
		t.Errorf("VM of deleted server %s still in vCenter", once)
	}
	noInstanceFiles(t, vc, once)
}

// buildEventHosts returns the hosts of the server's build attempts, in
// order: the compute__do_build_and_run_instance events of its create action.
func buildEventHosts(t *testing.T, id string) []string {
	t.Helper()
	ctrl := controlPlane(t)
	acts, err := ctrl.NovaGET(context.Background(), "/servers/"+id+"/os-instance-actions")
	if err != nil {
		t.Fatal(err)
	}
	var hosts []string
	for _, a := range asList(acts, "instanceActions") {
		if a["action"] != "create" {
			continue
		}
		detail, err := ctrl.NovaGET(context.Background(), fmt.Sprintf("/servers/%s/os-instance-actions/%s", id, a["request_id"]))
		if err != nil {
			t.Fatal(err)
		}
		ia, _ := detail["instanceAction"].(map[string]any)
		events := asList(ia, "events")
		// nova lists events newest first
		for i := len(events) - 1; i >= 0; i-- {
			if events[i]["event"] == "compute__do_build_and_run_instance" {
				hosts = append(hosts, fmt.Sprint(events[i]["host"]))
			}
		}
	}
	return hosts
}

// waitGone waits until the server is deleted (404 from nova).
func waitGone(t *testing.T, ctrl *cp.ControlPlane, id string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		_, err := ctrl.NovaGET(context.Background(), "/servers/"+id)
		if cp.StatusCode(err) == http.StatusNotFound {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("server %s not deleted: %v", id, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}
