package rpc

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	amqp "github.com/rabbitmq/amqp091-go"
)

// recordedTopology is what rabbitmqctl listed after the real Python server,
// client and notifier ran with one queue flavour (fixtures/record.py).
type recordedTopology struct {
	Flavour   string                       `json:"flavour"`
	Options   map[string]map[string]string `json:"options"`
	Exchanges []struct {
		Name       string `json:"name"`
		Type       string `json:"type"`
		Durable    bool   `json:"durable"`
		AutoDelete bool   `json:"auto_delete"`
		Role       string `json:"role"`
	} `json:"exchanges"`
	Queues []struct {
		Name       string  `json:"name"`
		Durable    bool    `json:"durable"`
		AutoDelete bool    `json:"auto_delete"`
		Arguments  [][]any `json:"arguments"`
		Role       string  `json:"role"`
	} `json:"queues"`
}

// TestDeclarationsMatchRecordedBroker checks, for each recorded queue
// flavour, that every exchange and queue the Go side declares has the
// flags and arguments the broker recorded for Python's declaration, since
// the broker answers 406 to any difference.
func TestDeclarationsMatchRecordedBroker(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join("..", "fixtures", "oslo", "topology_*.json"))
	if len(files) < 3 {
		t.Fatalf("recorded topologies: %v", files)
	}
	for _, file := range files {
		raw, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		var rec recordedTopology
		if err := json.Unmarshal(raw, &rec); err != nil {
			t.Fatal(err)
		}
		t.Run(filepath.Base(file), func(t *testing.T) {
			o := DefaultOptions()
			for _, group := range rec.Options {
				for k, v := range group {
					if _, err := o.Set(k, v); err != nil {
						t.Fatal(err)
					}
				}
			}
			checked := 0
			for _, e := range rec.Exchanges {
				var ours exchangeDecl
				switch {
				case e.Name == "nova":
					ours = o.topicExchange("nova")
				case strings.HasSuffix(e.Name, "_fanout"):
					ours = o.fanoutExchange(strings.TrimSuffix(e.Name, "_fanout"))
				default:
					continue
				}
				checked++
				if ours.Kind != e.Type || ours.Durable != e.Durable || ours.AutoDelete != e.AutoDelete {
					t.Errorf("exchange %s: ours %+v, recorded %+v", e.Name, ours, e)
				}
			}
			for _, q := range rec.Queues {
				var ours queueDecl
				switch q.Role {
				case "rpc_topic", "rpc_server", "notification":
					ours = o.topicQueue(q.Name)
				case "rpc_fanout", "rpc_reply":
					ours = o.transientQueue(q.Name)
				default:
					continue
				}
				checked++
				want := amqp.Table{}
				for _, a := range q.Arguments {
					name, _ := a[0].(string)
					want[name] = a[2]
				}
				if ours.Durable != q.Durable || ours.AutoDelete != q.AutoDelete || !reflect.DeepEqual(normalizeTable(ours.Args), normalizeTable(want)) {
					t.Errorf("queue %s (%s): ours durable=%v auto_delete=%v %v, recorded durable=%v auto_delete=%v %v",
						q.Name, q.Role, ours.Durable, ours.AutoDelete, ours.Args, q.Durable, q.AutoDelete, want)
				}
			}
			if checked < 6 {
				t.Fatalf("only %d declarations compared", checked)
			}
		})
	}
}

// normalizeTable makes numbers comparable whatever their Go type.
func normalizeTable(t amqp.Table) map[string]any {
	b, _ := json.Marshal(t)
	var out map[string]any
	_ = json.Unmarshal(b, &out)
	return out
}
