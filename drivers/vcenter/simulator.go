package vcenter

import (
	"cmp"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// simulatorBuild guards package-level state of govmomi's simulator package,
// which is not safe for simulators built concurrently: creating a service
// appends to the shared evaluation licence (LicenseManager.init) that every
// host or cluster creation reads (LicenseAssignmentManager.PutObject), and
// starting a server rewrites option values shared by all vCenter models
// (Service.NewServer). Service creation and server start take it for
// writing, each host creation for reading. It guards that third-party state
// only.
var simulatorBuild sync.RWMutex

// Defaults for SimulatorConfig.
const (
	DefaultSimulatorClusters        = 2
	DefaultSimulatorHostsPerCluster = 3
	DefaultSimulatorDatastores      = 2
	DefaultSimulatorListenAddr      = "127.0.0.1:0"
	DefaultSimulatorUser            = "administrator@vsphere.local"
	// SimulatorDVS is the distributed switch the simulator creates in its
	// datacenter, with every host as a member.
	SimulatorDVS = "DVS0"
)

// SimulatorConfig sizes the embedded vCenter simulator. Zero values take
// the defaults above.
type SimulatorConfig struct {
	// Clusters is the number of clusters in the one datacenter.
	Clusters int
	// HostsPerCluster is the number of ESXi hosts per cluster.
	HostsPerCluster int
	// Datastores is the number of VMFS datastores, each mounted by every
	// host (so shared by every cluster).
	Datastores int
	// ListenAddr is the TCP address to serve HTTPS on; port 0 picks a free
	// port.
	ListenAddr string
	// User and Password are the credentials the simulator accepts. An
	// empty Password gets a random one; URL returns it either way.
	User     string
	Password string
	// InstanceUUID is the simulated vCenter's about.instanceUuid; empty
	// picks a random one. Compute node names embed it, so an agent that
	// restarts on a simulator must keep it to find its nodes again.
	InstanceUUID string
	// SessionTimeout, if positive, ends sessions idle for that long (as
	// vCenter's session timeout does). It applies to sessions created after
	// start-up.
	SessionTimeout time.Duration
}

// Simulator is an in-process vCenter Server simulator (govmomi's vcsim, VPX
// model) serving the vSphere SOAP API over HTTPS with a freshly generated
// self-signed certificate, so clients must connect with Config.Insecure (or
// trust CertificatePEM).
//
// The agent runs against an embedded Simulator when no vCenter URL is
// configured, which makes a full stack runnable and testable without
// VMware infrastructure. Its inventory is one datacenter "DC0" with clusters
// "DC0_C0", "DC0_C1", ... of hosts "DC0_C0_H0", ..., and datastores
// "LocalDS_0", "LocalDS_1", ... of type VMFS mounted by every host, backed by
// a temporary directory. It holds no virtual machines at start. One
// distributed switch, SimulatorDVS ("DVS0"), spans every host; it has
// only its uplink port group at start. The simulator keeps per-port state
// of distributed switches (names, blocking, traffic filters, connected VMs)
// that govmomi's vcsim lacks (see dvsExtension).
type Simulator struct {
	model  *simulator.Model
	server *simulator.Server
	url    *url.URL // with credentials
	cert   []byte   // PEM
	once   sync.Once
}

// StartSimulator builds the simulator inventory and starts serving it. The
// caller must Close the Simulator. Start-up takes about 0.2 s for the
// default size and grows with the number of hosts (about 25 ms per host;
// 10 clusters of 10 hosts take about 3 s).
func StartSimulator(ctx context.Context, cfg SimulatorConfig) (*Simulator, error) {
	switch {
	case cfg.Clusters < 0:
		return nil, fmt.Errorf("%w: Clusters must not be negative, got %d", ErrInvalidConfig, cfg.Clusters)
	case cfg.HostsPerCluster < 0:
		return nil, fmt.Errorf("%w: HostsPerCluster must not be negative, got %d", ErrInvalidConfig, cfg.HostsPerCluster)
	case cfg.Datastores < 0:
		return nil, fmt.Errorf("%w: Datastores must not be negative, got %d", ErrInvalidConfig, cfg.Datastores)
	case cfg.SessionTimeout < 0:
		return nil, fmt.Errorf("%w: SessionTimeout must not be negative, got %s", ErrInvalidConfig, cfg.SessionTimeout)
	}
	cfg.Clusters = cmp.Or(cfg.Clusters, DefaultSimulatorClusters)
	cfg.HostsPerCluster = cmp.Or(cfg.HostsPerCluster, DefaultSimulatorHostsPerCluster)
	cfg.Datastores = cmp.Or(cfg.Datastores, DefaultSimulatorDatastores)
	cfg.ListenAddr = cmp.Or(cfg.ListenAddr, DefaultSimulatorListenAddr)
	cfg.User = cmp.Or(cfg.User, DefaultSimulatorUser)
	if cfg.Password == "" {
		cfg.Password = randomHex(12)
	}
	host, _, err := net.SplitHostPort(cfg.ListenAddr)
	if err != nil {
		return nil, fmt.Errorf("%w: ListenAddr: %w", ErrInvalidConfig, err)
	}
	cert, certPEM, err := selfSignedCert(host)
	if err != nil {
		return nil, fmt.Errorf("vcenter simulator: certificate: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	m := simulator.VPX()
	about := &m.ServiceContent.About
	about.Version = "8.0.3"
	about.Build = "24022515"
	about.ApiVersion = "8.0.3.0"
	about.FullName = fmt.Sprintf("%s %s build-%s", about.Name, about.Version, about.Build)
	about.InstanceUuid = cfg.InstanceUUID
	if about.InstanceUuid == "" {
		about.InstanceUuid = randomUUID()
	}

	// The service, datacenter and clusters are built under the write lock;
	// hosts and datastores are added afterwards, one host at a time under
	// the read lock (see simulatorBuild), so that a large inventory does not
	// hold up other simulators starting in the same process.
	m.Datacenter, m.Cluster, m.ClusterHost, m.Host, m.Datastore = 1, cfg.Clusters, 0, 0, 0
	m.Machine, m.Portgroup, m.Autostart = 0, 0, false
	simulatorBuild.Lock()
	err = m.Create()
	simulatorBuild.Unlock()
	if err != nil {
		m.Remove()
		return nil, fmt.Errorf("vcenter simulator: create inventory: %w", err)
	}
	installDVSExtension(m)
	installMKSExtension(m)
	installImportExtension(m) // importsim.go
	installPBMExtension(m)
	if err := populate(ctx, m, cfg); err != nil {
		m.Remove()
		return nil, fmt.Errorf("vcenter simulator: create inventory: %w", err)
	}
	if err := ctx.Err(); err != nil {
		m.Remove()
		return nil, err
	}
	if cfg.SessionTimeout > 0 {
		m.Map().OptionManager().UpdateOptions(&types.UpdateOptions{
			ChangedValue: []types.BaseOptionValue{&types.OptionValue{
				Key:   "config.vmacore.soap.sessionTimeout",
				Value: cfg.SessionTimeout.String(),
			}},
		})
	}

	m.Service.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	m.Service.Listen = &url.URL{Host: cfg.ListenAddr, User: url.UserPassword(cfg.User, cfg.Password)}
	simulatorBuild.Lock()
	server := m.Service.NewServer()
	simulatorBuild.Unlock()

	u := *server.URL
	u.User = url.UserPassword(cfg.User, cfg.Password)
	return &Simulator{model: m, server: server, url: &u, cert: certPEM}, nil
}

// URL returns the simulator's SDK URL including the credentials it accepts,
// e.g. https://user:pass@127.0.0.1:41234/sdk; usable as Config.URL. The
// returned URL is a copy.
func (s *Simulator) URL() *url.URL {
	u := *s.url
	return &u
}

// CertificatePEM returns the simulator's self-signed certificate, for a
// client that verifies TLS instead of using Config.Insecure.
func (s *Simulator) CertificatePEM() []byte {
	return slices.Clone(s.cert)
}

// Close stops serving, waiting for calls in progress, and removes the
// simulator's temporary files. It is idempotent.
func (s *Simulator) Close() {
	s.once.Do(func() {
		s.server.Close()
		s.model.Remove()
	})
}

// populate adds cfg.HostsPerCluster hosts to every cluster of m, then
// cfg.Datastores VMFS datastores mounted by every host, then the
// distributed switch SimulatorDVS. It talks to the model
// through an in-process client (no HTTP, no login).
func populate(ctx context.Context, m *simulator.Model, cfg SimulatorConfig) error {
	c, err := vim25.NewClient(ctx, m.Service)
	if err != nil {
		return err
	}
	clusters := m.Map().All("ClusterComputeResource")
	slices.SortFunc(clusters, byName)
	var hosts []*object.HostSystem
	for _, e := range clusters {
		cluster := object.NewClusterComputeResource(c, e.Reference())
		for i := range cfg.HostsPerCluster {
			name := fmt.Sprintf("%s_H%d", e.Entity().Name, i)
			h, err := addHost(ctx, cluster, name)
			if err != nil {
				return fmt.Errorf("add host %s: %w", name, err)
			}
			hosts = append(hosts, h)
		}
	}

	home := ""
	for _, o := range m.Map().OptionManager().Setting {
		if ov := o.GetOptionValue(); ov.Key == "vcsim.home" {
			home, _ = ov.Value.(string)
		}
	}
	if home == "" {
		return errors.New("simulator has no vcsim.home directory")
	}
	for i := range cfg.Datastores {
		name := fmt.Sprintf("LocalDS_%d", i)
		dir := filepath.Join(home, name) // removed with home by Model.Remove
		if err := os.Mkdir(dir, 0o700); err != nil {
			return err
		}
		for _, h := range hosts {
			dss, err := h.ConfigManager().DatastoreSystem(ctx)
			if err != nil {
				return err
			}
			if _, err := dss.CreateLocalDatastore(ctx, name, dir); err != nil {
				return fmt.Errorf("datastore %s on %s: %w", name, h.Reference().Value, err)
			}
		}
	}
	shapeDatastores(m)
	return addDVS(ctx, m, c, hosts)
}

// addDVS creates the distributed switch SimulatorDVS in the datacenter's
// network folder through the API, makes every host a member and marks its
// uplink port group as one (vcsim does not), holding simulatorBuild for
// reading.
func addDVS(ctx context.Context, m *simulator.Model, c *vim25.Client, hosts []*object.HostSystem) error {
	simulatorBuild.RLock()
	defer simulatorBuild.RUnlock()
	dcs := m.Map().All("Datacenter")
	if len(dcs) == 0 {
		return errors.New("simulator has no datacenter")
	}
	folders, err := object.NewDatacenter(c, dcs[0].Reference()).Folders(ctx)
	if err != nil {
		return err
	}
	task, err := folders.NetworkFolder.CreateDVS(ctx, types.DVSCreateSpec{
		ConfigSpec: &types.VMwareDVSConfigSpec{DVSConfigSpec: types.DVSConfigSpec{Name: SimulatorDVS}},
	})
	if err != nil {
		return fmt.Errorf("create %s: %w", SimulatorDVS, err)
	}
	info, err := task.WaitForResult(ctx, nil)
	if err != nil {
		return fmt.Errorf("create %s: %w", SimulatorDVS, err)
	}
	ref, ok := info.Result.(types.ManagedObjectReference)
	if !ok {
		return fmt.Errorf("unexpected CreateDVS_Task result %T", info.Result)
	}
	spec := &types.DVSConfigSpec{}
	for _, h := range hosts {
		spec.Host = append(spec.Host, types.DistributedVirtualSwitchHostMemberConfigSpec{
			Operation: string(types.ConfigSpecOperationAdd),
			Host:      h.Reference(),
		})
	}
	task, err = object.NewDistributedVirtualSwitch(c, ref).Reconfigure(ctx, spec)
	if err != nil {
		return fmt.Errorf("add hosts to %s: %w", SimulatorDVS, err)
	}
	if _, err := task.WaitForResult(ctx, nil); err != nil {
		return fmt.Errorf("add hosts to %s: %w", SimulatorDVS, err)
	}
	sctx := m.Service.Context
	sw, ok := m.Map().Get(ref).(*simulator.DistributedVirtualSwitch)
	if !ok {
		return fmt.Errorf("%s is not a distributed switch", ref)
	}
	var uplinks []types.ManagedObjectReference
	m.Map().WithLock(sctx, sw, func() { uplinks = slices.Clone(sw.Portgroup) })
	for _, pgRef := range uplinks {
		if pg, ok := m.Map().Get(pgRef).(*simulator.DistributedVirtualPortgroup); ok {
			m.Map().WithLock(sctx, pg, func() { pg.Config.Uplink = types.NewBool(true) })
		}
	}
	return nil
}

// addHost adds a connected host named name to cluster and waits for it,
// holding simulatorBuild for reading.
func addHost(ctx context.Context, cluster *object.ClusterComputeResource, name string) (*object.HostSystem, error) {
	simulatorBuild.RLock()
	defer simulatorBuild.RUnlock()
	task, err := cluster.AddHost(ctx, types.HostConnectSpec{HostName: name}, true, nil, nil)
	if err != nil {
		return nil, err
	}
	info, err := task.WaitForResult(ctx, nil)
	if err != nil {
		return nil, err
	}
	ref, ok := info.Result.(types.ManagedObjectReference)
	if !ok {
		return nil, fmt.Errorf("unexpected AddHost_Task result %T", info.Result)
	}
	return object.NewHostSystem(cluster.Client(), ref), nil
}

func byName(a, b mo.Entity) int { return cmp.Compare(a.Entity().Name, b.Entity().Name) }

// shapeDatastores turns the model's local datastores (type OTHER, 1 TiB per
// host) into VMFS datastores with distinct, plausible sizes: datastore i has
// 4+2i TiB of which (80-10*(i%6))% is free.
func shapeDatastores(m *simulator.Model) {
	ctx := m.Service.Context
	all := m.Map().All("Datastore")
	slices.SortFunc(all, byName)
	for i, e := range all {
		ds, ok := e.(*simulator.Datastore)
		if !ok {
			continue
		}
		capacity := (4 + 2*int64(i)) << 40
		free := capacity / 100 * (80 - 10*int64(i%6))
		m.Map().WithLock(ctx, ds, func() {
			info := ds.Info.GetDatastoreInfo()
			info.FreeSpace = free
			info.MaxFileSize = 62 << 40
			info.MaxVirtualDiskCapacity = 62 << 40
			ds.Info = &types.VmfsDatastoreInfo{
				DatastoreInfo: *info,
				Vmfs: &types.HostVmfsVolume{
					HostFileSystemVolume: types.HostFileSystemVolume{
						Type:     string(types.HostFileSystemVolumeFileSystemTypeVMFS),
						Name:     ds.Name,
						Capacity: capacity,
					},
					BlockSizeMb:  1,
					MaxBlocks:    63963136,
					MajorVersion: 6,
					Version:      "6.82",
					Uuid:         randomHex(4) + "-" + randomHex(4) + "-" + randomHex(2) + "-" + randomHex(6),
				},
			}
			ds.Summary.Type = string(types.HostFileSystemVolumeFileSystemTypeVMFS)
			ds.Summary.Capacity = capacity
			ds.Summary.FreeSpace = free
			ds.Summary.MultipleHostAccess = types.NewBool(true)
		})
	}
}

// selfSignedCert makes an ECDSA certificate valid for host, localhost and
// the loopback addresses, for one day.
func selfSignedCert(host string) (tls.Certificate, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "vcagent embedded vCenter simulator"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	if ip := net.ParseIP(host); ip != nil {
		if !ip.IsUnspecified() {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		}
	} else if host != "" && host != "localhost" {
		tmpl.DNSNames = append(tmpl.DNSNames, host)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, certPEM, nil
}

// randomHex returns n random bytes in hex.
func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand.Read never fails
	return hex.EncodeToString(b)
}

// randomUUID returns a random (version 4) UUID string.
func randomUUID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b)
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}
