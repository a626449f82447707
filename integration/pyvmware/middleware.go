package main

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
)

// counter counts requests by client and SOAP method (or HTTP method and
// path prefix for the datastore file and other non-SOAP URLs).
type counter struct {
	mu sync.Mutex
	n  map[string]map[string]int
}

func newCounter() *counter { return &counter{n: map[string]map[string]int{}} }

func (c *counter) add(client, what string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n[client] == nil {
		c.n[client] = map[string]int{}
	}
	c.n[client][what]++
}

func (c *counter) serve(w http.ResponseWriter, _ *http.Request) {
	c.mu.Lock()
	b, err := json.Marshal(c.n)
	c.mu.Unlock()
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(b)
}

// clientOf tells vcagent (User-Agent "vcagent") from the Python driver
// (python-requests under suds).
func clientOf(r *http.Request) string {
	if strings.Contains(r.UserAgent(), "vcagent") {
		return "agent"
	}
	return "python"
}

var (
	// xsd:dateTime without a zone: valid XML Schema, what suds sends for a
	// naive Python datetime (nova's RegisterExtension ...), and what the
	// simulator's decoder (RFC 3339 only) rejects. vCenter takes it as UTC.
	naiveTime = regexp.MustCompile(`>(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?)</`)
	// An integral decimal ("1024.0": suds' rendering of a Python float,
	// e.g. nova's capacityKb) in an element; only rewritten for elements
	// that are integers in every vim25 type that has them.
	decimalElem = regexp.MustCompile(`<((?:[\w-]+:)?([\w]+))((?:\s[^>]*)?)>(-?\d+)\.0+</`)
	// A SCSI controller device: vCenter gives it scsiCtlrUnitNumber 7 when
	// the client leaves it out (nova does), the simulator keeps none.
	scsiController = regexp.MustCompile(`(?s)(<((?:[\w-]+:)?)device\b[^>]*type="(?:[\w-]+:)?(?:VirtualLsiLogicController|VirtualLsiLogicSASController|ParaVirtualSCSIController|VirtualBusLogicController)"[^>]*>)(.*?)(</(?:[\w-]+:)?device>)`)
)

// middleware counts every request and rewrites the Python client's
// requests where the simulator's decoder is stricter than vCenter.
func middleware(next http.Handler, counts *counter, schema *schema, dcName string) http.Handler {
	intOnly := schema.integerElements()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		client := clientOf(r)
		switch {
		case r.URL.Path == "/vcsim/counts":
		case r.Method == http.MethodPost && strings.HasPrefix(r.URL.Path, "/sdk"):
			body, err := io.ReadAll(r.Body)
			_ = r.Body.Close()
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			counts.add(client, soapMethod(body))
			if client != "agent" {
				body = naiveTime.ReplaceAll(body, []byte(">${1}Z</"))
				body = decimalElem.ReplaceAllFunc(body, func(m []byte) []byte {
					sub := decimalElem.FindSubmatch(m)
					if !intOnly[string(sub[2])] {
						return m
					}
					return []byte("<" + string(sub[1]) + string(sub[3]) + ">" + string(sub[4]) + "</")
				})
				body = scsiController.ReplaceAllFunc(body, func(m []byte) []byte {
					sub := scsiController.FindSubmatch(m)
					if bytes.Contains(sub[3], []byte("scsiCtlrUnitNumber")) {
						return m
					}
					return []byte(string(sub[1]) + string(sub[3]) + "<" + string(sub[2]) + "scsiCtlrUnitNumber>7</" + string(sub[2]) + "scsiCtlrUnitNumber>" + string(sub[4]))
				})
			}
			r.Body = io.NopCloser(bytes.NewReader(body))
			r.ContentLength = int64(len(body))
			r.Header.Set("Content-Length", strconv.Itoa(len(body)))
		default:
			p := r.URL.Path
			switch {
			case strings.HasPrefix(p, "/folder/"):
				p = "/folder"
			case strings.HasPrefix(p, "/nfc/"), strings.HasPrefix(p, exportPrefix):
				p = p[:strings.IndexByte(p[1:], '/')+1]
			}
			counts.add(client, r.Method+" "+p)
			// An ESX host serves its datastores under the datacenter
			// "ha-datacenter"; nova uploads images to the host that way.
			if q := r.URL.Query(); q.Get("dcPath") == "ha-datacenter" {
				q.Set("dcPath", dcName)
				r.URL.RawQuery = q.Encode()
			}
		}
		next.ServeHTTP(w, r)
	})
}

// soapMethod is the name of the first element in the SOAP Body.
func soapMethod(body []byte) string {
	d := xml.NewDecoder(bytes.NewReader(body))
	inBody := false
	for {
		tok, err := d.Token()
		if err != nil {
			return "?"
		}
		if se, ok := tok.(xml.StartElement); ok {
			if inBody {
				return se.Name.Local
			}
			inBody = se.Name.Local == "Body"
		}
	}
}
