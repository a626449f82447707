//go:build integration

package cp

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

var ctrl *ControlPlane

func TestMain(m *testing.M) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	var err error
	ctrl, err = Start(ctx, "")
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "control plane:", err)
		os.Exit(1)
	}
	code := m.Run()
	if err := ctrl.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, "control plane stop:", err)
	}
	os.Exit(code)
}

func TestEnv(t *testing.T) {
	if !strings.HasSuffix(ctrl.TransportURL, "/"+ctrl.Rabbit.VHost) || ctrl.Token == "" ||
		ctrl.NovaURL == "" || ctrl.PlacementURL == "" || ctrl.GlanceURL == "" {
		t.Fatalf("incomplete env.json: %+v", ctrl.Env)
	}
	conf, err := os.ReadFile(ctrl.NovaComputeConf)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"transport_url = " + ctrl.TransportURL, "[vmware]", "[placement]", "[glance]"} {
		if !strings.Contains(string(conf), want) {
			t.Errorf("%s lacks %q", ctrl.NovaComputeConf, want)
		}
	}
	if strings.Contains(string(conf), "connection =") {
		t.Errorf("%s has a database connection", ctrl.NovaComputeConf)
	}
}

func TestNova(t *testing.T) {
	ctx := context.Background()
	v, err := ctrl.NovaGET(ctx, "/")
	if err != nil {
		t.Fatal(err)
	}
	if got := v["version"].(map[string]any)["version"]; got != "2.93" {
		t.Errorf("max microversion %v", got)
	}
	fl, err := ctrl.NovaGET(ctx, "/flavors/1")
	if err != nil {
		t.Fatal(err)
	}
	if name := fl["flavor"].(map[string]any)["name"]; name != "m1.tiny" {
		t.Errorf("flavor 1 is %v", name)
	}
	svcs, err := ctrl.NovaGET(ctx, "/os-services")
	if err != nil {
		t.Fatal(err)
	}
	up := map[string]bool{}
	for _, s := range svcs["services"].([]any) {
		s := s.(map[string]any)
		up[s["binary"].(string)] = s["state"] == "up"
	}
	if !up["nova-conductor"] || !up["nova-scheduler"] {
		t.Errorf("services: %v", svcs)
	}
	// POST + DELETE round trip, and an HTTP error
	_, err = ctrl.NovaPOST(ctx, "/flavors", map[string]any{"flavor": map[string]any{
		"name": "cp-test", "id": "cp-test", "vcpus": 1, "ram": 32, "disk": 0}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ctrl.NovaDELETE(ctx, "/flavors/cp-test"); err != nil {
		t.Fatal(err)
	}
	if _, err := ctrl.NovaGET(ctx, "/flavors/cp-test"); StatusCode(err) != 404 {
		t.Errorf("GET deleted flavor: %v", err)
	}
}

func TestPlacementAndGlance(t *testing.T) {
	ctx := context.Background()
	rps, err := ctrl.PlacementGET(ctx, "/resource_providers")
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := rps["resource_providers"]; !ok {
		t.Errorf("placement: %v", rps)
	}
	imgs, err := ctrl.Do(ctx, "GET", ctrl.GlanceURL+"/v2/images", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := imgs["images"]; !ok {
		t.Errorf("glance: %v", imgs)
	}
}

func TestCLI(t *testing.T) {
	ctx := context.Background()
	out, err := ctrl.OpenStack(ctx, "flavor", "list", "-f", "json")
	if err != nil {
		t.Fatal(err)
	}
	var flavors []map[string]any
	if err := json.Unmarshal([]byte(out), &flavors); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if len(flavors) < 5 {
		t.Errorf("flavors: %s", out)
	}
	if _, err := ctrl.OpenStack(ctx, "--os-endpoint", ctrl.GlanceURL+"/v2", "image", "list"); err != nil {
		t.Error(err)
	}
	out, err = ctrl.NovaManage(ctx, "cell_v2", "list_cells")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, " cell1 ") || !strings.Contains(out, " cell0 ") {
		t.Errorf("list_cells: %s", out)
	}
}
