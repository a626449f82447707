// Command pyvmware serves govmomi's vCenter simulator in a shape that both
// vcagent and the real Python nova-compute (VMware vCenter driver through
// oslo.vmware and suds) can work against, and counts the SOAP requests each
// client sends, by method.
//
// The simulator itself is used unchanged (govmomi from the repository's
// go.mod); every gap the Python driver falls into is closed here, around
// it: an HTTP middleware, wrapper objects replacing a few of the
// simulator's managed objects in its registry, a few inventory settings,
// and a WSDL generated from govmomi's vim25 types. README.md lists them.
//
// Usage (the side-by-side benchmark starts it by itself):
//
//	go run ./integration/pyvmware -l 127.0.0.1:0 -cluster 2 -wsdl /tmp/vimService.wsdl
//
// It prints one JSON line {"url": ..., "user": ..., "password": ..., "pid": ...}
// on standard output once it serves, and serves until SIGTERM, SIGINT or
// (with -stdin) the end of its standard input. GET /vcsim/counts answers the
// request counts so far: {"client": {"method": n}}; clients are told apart
// by User-Agent ("vcagent" = the agent, anything else = "python").
package main

import (
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"syscall"

	"github.com/vmware/govmomi/simulator"
)

func main() {
	listen := flag.String("l", "127.0.0.1:0", "listen address")
	user := flag.String("username", "vcuser", "login user")
	pass := flag.String("password", "vcpass", "login password")
	clusters := flag.Int("cluster", 2, "clusters (DC0_C0, DC0_C1, ...)")
	hosts := flag.Int("host", 3, "hosts per cluster")
	datastores := flag.Int("ds", 1, "datastores (LocalDS_0, ...), mounted on every host")
	vms := flag.Int("vm", 0, "VMs per resource pool created up front")
	wsdlPath := flag.String("wsdl", "", "WSDL file to serve at /sdk/vimService.wsdl; generated from govmomi's vim25/types when missing")
	govmomiDir := flag.String("govmomi", "", "govmomi source tree for the WSDL (default: the module's, from 'go list -m' or the module cache)")
	genOnly := flag.Bool("gen-wsdl", false, "only write the WSDL to -wsdl and exit")
	stdin := flag.Bool("stdin", false, "stop when standard input closes")
	trace := flag.String("trace", "", "write the simulator's SOAP trace to this file")
	flag.Parse()

	schema, err := loadSchema(*govmomiDir)
	if err != nil {
		log.Fatalf("reading govmomi's vim25 types: %v", err)
	}
	if *wsdlPath == "" && *genOnly {
		log.Fatal("-gen-wsdl needs -wsdl FILE")
	}
	var wsdl []byte
	if *wsdlPath != "" {
		if wsdl, err = os.ReadFile(*wsdlPath); err != nil || *genOnly {
			wsdl = schema.WSDL()
			if err := os.WriteFile(*wsdlPath, wsdl, 0o644); err != nil {
				log.Fatal(err)
			}
		}
	} else {
		wsdl = schema.WSDL()
	}
	if *genOnly {
		fmt.Printf("%s: %d complex types, %d enums, %d methods, %d faults\n", *wsdlPath,
			len(schema.structs), len(schema.enums), len(schema.methods), len(schema.faults))
		return
	}

	if *trace != "" {
		f, err := os.Create(*trace)
		if err != nil {
			log.Fatal(err)
		}
		simulator.TraceFile = f
		simulator.Trace = true
	}

	model := simulator.VPX()
	model.Cluster = *clusters
	model.ClusterHost = *hosts
	model.Host = 0
	model.Datastore = *datastores
	model.Machine = *vms
	model.Autostart = false
	if err := model.Create(); err != nil {
		log.Fatal(err)
	}
	ip, _, err := net.SplitHostPort(*listen)
	if err != nil {
		log.Fatal(err)
	}
	shapeInventory(model.Map(), ip)
	installWrappers(model.Map())
	// ExportVm (and the linked clones it exports): export.go.
	ex := newExports()
	model.Map().Handler = ex.handler

	model.Service.Listen = &url.URL{Host: *listen, User: url.UserPassword(*user, *pass)}
	model.Service.TLS = new(tls.Config)
	model.Service.ServeMux = http.NewServeMux()
	model.Service.ServeMux.HandleFunc("/sdk/vimService.wsdl", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/xml; charset=utf-8")
		_, _ = w.Write(wsdl)
	})
	counts := newCounter()
	model.Service.ServeMux.HandleFunc("/vcsim/counts", counts.serve)
	model.Service.ServeMux.HandleFunc(exportPrefix, ex.serve)
	srv := model.Service.NewServer()
	// Every request passes the middleware: counting, and the request
	// rewrites the Python client needs. The server reads its handler per
	// request; no client knows the URL yet.
	srv.Config.Handler = middleware(srv.Config.Handler, counts, schema, datacenterName(model.Map()))

	bare := url.URL{Scheme: srv.URL.Scheme, Host: srv.URL.Host, Path: srv.URL.Path}
	ex.setBase(srv.URL.Scheme + "://" + srv.URL.Host)
	line, _ := json.Marshal(map[string]any{"url": bare.String(), "user": *user, "password": *pass, "pid": os.Getpid()})
	fmt.Println(string(line))

	done := make(chan os.Signal, 1)
	signal.Notify(done, syscall.SIGTERM, syscall.SIGINT)
	if *stdin {
		go func() { _, _ = io.Copy(io.Discard, os.Stdin); done <- syscall.SIGTERM }()
	}
	<-done
	srv.CloseClientConnections() // a client's open long poll must not hold up the exit
	srv.Close()
	model.Remove()
}
