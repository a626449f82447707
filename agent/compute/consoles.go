package compute

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/rs/zerolog"

	"github.com/vcagent/vcagent/agent/ovo"
	"github.com/vcagent/vcagent/drivers/vcenter"
	"github.com/vcagent/vcagent/rpc"
)

// ConsoleConfig holds nova-compute's console options. The zero value is
// not useful; start from DefaultConsoleConfig.
type ConsoleConfig struct {
	// VNCEnabled is [vnc] enabled; NoVNCProxyBaseURL [vnc] novncproxy_base_url.
	VNCEnabled        bool
	NoVNCProxyBaseURL string
	// VNCPort and VNCPortTotal are [vmware] vnc_port and vnc_port_total:
	// the range VMs' VNC ports are taken from; VNCKeymap is [vmware] vnc_keymap.
	VNCPort      int
	VNCPortTotal int
	VNCKeymap    string
	// MKSEnabled is [mks] enabled; MKSProxyBaseURL [mks] mksproxy_base_url.
	MKSEnabled      bool
	MKSProxyBaseURL string
	// SpiceEnabled, RDPEnabled and SerialEnabled are [spice] enabled,
	// [rdp] enabled and [serial_console] enabled.
	SpiceEnabled  bool
	RDPEnabled    bool
	SerialEnabled bool
	// TokenTTL is [consoleauth] token_ttl, in seconds.
	TokenTTL int
	// SerialLogDir is [vmware] serial_log_dir, where a VSPC writes the VMs'
	// serial logs (get_console_output reads them).
	SerialLogDir string
}

// DefaultConsoleConfig returns nova Zed's defaults.
func DefaultConsoleConfig() ConsoleConfig {
	return ConsoleConfig{
		VNCEnabled: true, NoVNCProxyBaseURL: "http://127.0.0.1:6080/vnc_auto.html",
		VNCPort: 5900, VNCPortTotal: 10000, VNCKeymap: "en-us",
		MKSEnabled: false, MKSProxyBaseURL: "http://127.0.0.1:6090/",
		TokenTTL: 600, SerialLogDir: "/opt/vmware/vspc",
	}
}

// SetConsoleConfig sets the role's console options; call it before Run.
// Without it the role uses nova's defaults.
func (m *Manager) SetConsoleConfig(c ConsoleConfig) { m.life.consoles = &c }

func (l *lifecycle) consoleConfig() ConsoleConfig {
	if l.consoles != nil {
		return *l.consoles
	}
	return DefaultConsoleConfig()
}

// consoleHypervisor is what the consoles need of vCenter beyond Hypervisor
// (*vcenter.Session has it).
type consoleHypervisor interface {
	EnableVNC(ctx context.Context, vm vcenter.Ref, minPort, total int, keymap string) (int, error)
	HostName(ctx context.Context, host vcenter.Ref) (string, error)
	AcquireMKSTicket(ctx context.Context, vm vcenter.Ref) (vcenter.MKSTicket, error)
}

func (l *lifecycle) consoleHV() (consoleHypervisor, error) {
	hv, ok := l.hv.(consoleHypervisor)
	if !ok {
		return nil, rpc.BuiltinError("NotImplementedError", "")
	}
	return hv, nil
}

// novaError is a nova.exception error with its kwargs; code is the HTTP
// code the API answers with (and the instance fault's).
func novaError(class, message string, code int, kwargs map[string]any) *rpc.RemoteError {
	kw := map[string]any{"code": code}
	for k, v := range kwargs {
		kw[k] = v
	}
	return &rpc.RemoteError{Class: class, Module: "nova.exception", Message: message, Kwargs: kw}
}

func consoleTypeInvalid(t string) error {
	return novaError("ConsoleTypeInvalid", "Invalid console type "+t, 400, map[string]any{"console_type": t})
}

func consoleTypeUnavailable(t string) error {
	return novaError("ConsoleTypeUnavailable", "Unavailable console type "+t+".", 400, map[string]any{"console_type": t})
}

// vimFault is oslo.vmware's VimFaultException for a vSphere fault the
// driver did not expect, as nova-compute's reply carries it.
func vimFault(err error) error {
	var re *rpc.RemoteError
	if errors.As(err, &re) {
		return err
	}
	return &rpc.RemoteError{Class: "VimFaultException", Module: "oslo_vmware.exceptions", Message: err.Error(), Kwargs: map[string]any{}}
}

// instanceCall runs body as nova's @wrap_exception @wrap_instance_fault
// methods that take no instance action (the consoles, diagnostics): a
// failure records the instance fault (not for InstanceNotFound) with the
// exception's code, then sends the exception notifications, and is the
// reply.
func (l *lifecycle) instanceCall(ctx context.Context, req *rpc.Request, method string, body func(ctx context.Context, inst *ovo.Object) (any, error)) (any, error) {
	inst, err := l.instanceArg(req)
	if err != nil {
		return nil, err
	}
	log := zerolog.Ctx(ctx).With().Str("instance_uuid", inst.StringOrEmpty("uuid")).Logger()
	ctx = log.WithContext(ctx)
	res, berr := body(ctx, inst)
	if berr == nil {
		return res, nil
	}
	log.Info().Err(berr).Str("method", method).Msg("instance call failed")
	var re *rpc.RemoteError
	if !errors.As(berr, &re) || re.Class != "InstanceNotFound" {
		l.recordCodedFault(ctx, req.Context, inst, berr)
	}
	l.notify.exception(ctx, req.Context, method, l.exceptionArgs(req, inst), berr)
	return nil, berr
}

// recordCodedFault is compute_utils.add_instance_fault_from_exc: the code a
// nova exception carries (500 otherwise), its message (the class name for
// exceptions that are not nova's), and details only for code 500.
func (l *lifecycle) recordCodedFault(ctx context.Context, rc rpc.Context, inst *ovo.Object, cause error) {
	code, msg := faultCodeAndMessage(cause)
	var re *rpc.RemoteError
	if errors.As(cause, &re) && re.Module != "nova.exception" {
		msg = re.Class
	}
	details := ""
	if code == 500 {
		details = "Traceback (most recent call last):\n  (raised by vcagent)\n" + cause.Error() + "\n"
	}
	f := ovo.New("InstanceFault", l.cond.version("InstanceFault"))
	f.SetString("instance_uuid", inst.StringOrEmpty("uuid"))
	f.SetInt("code", code)
	f.SetString("message", msg)
	f.SetString("details", details)
	f.SetString("host", l.host)
	if _, err := l.cond.ObjectAction(ctx, rc, f, "create", nil, nil); err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Msg("recording the instance fault failed")
	}
}

// consoleArgs are the console calls' arguments.
type consoleArgs struct {
	ConsoleType string `json:"console_type"`
	Port        any    `json:"port"`
}

// console is a driver's console (nova's ctype.Console*): where the proxy
// connects.
type console struct {
	host               string
	port               int
	internalAccessPath any // string or nil
}

// vncConsole is the VMware driver's get_vnc_console: the VM's VNC port on
// the ESXi host that runs it (vCenter has no VNC proxy). Spawn gives VMs
// their port when [vnc] is enabled; a VM without one (built while it was
// off) gets it here, by nova's allocation rule.
func (l *lifecycle) vncConsole(ctx context.Context, inst *ovo.Object) (console, error) {
	hv, err := l.consoleHV()
	if err != nil {
		return console{}, err
	}
	// The watcher's index has the VM and its host (runtime.host): the
	// console needs neither FindAllByUuid nor a read of the VM.
	vm, ok := l.vms.state(inst.StringOrEmpty("uuid"))
	if !ok || vm.Host.IsZero() {
		read, err := l.vmOf(ctx, inst)
		if err != nil {
			return console{}, err
		}
		vm = vcenter.VMState{Ref: read.Ref, Host: read.Host}
	}
	cfg := l.consoleConfig()
	port, err := hv.EnableVNC(ctx, vm.Ref, cfg.VNCPort, cfg.VNCPortTotal, cfg.VNCKeymap)
	if errors.Is(err, vcenter.ErrVNCPortsExhausted) {
		return console{}, novaError("ConsolePortRangeExhausted",
			fmt.Sprintf("The console port range %d-%d is exhausted.", cfg.VNCPort, cfg.VNCPort+cfg.VNCPortTotal), 500,
			map[string]any{"min_port": cfg.VNCPort, "max_port": cfg.VNCPort + cfg.VNCPortTotal})
	}
	if errors.Is(err, vcenter.ErrNotFound) {
		// Gone meanwhile (InstanceNotFound), or re-registered under
		// another moref that the watcher has not reported yet.
		l.vms.forget(inst.StringOrEmpty("uuid"), vm.Ref)
		read, ferr := l.vmOf(ctx, inst)
		if ferr != nil {
			return console{}, ferr
		}
		vm = vcenter.VMState{Ref: read.Ref, Host: read.Host}
		port, err = hv.EnableVNC(ctx, vm.Ref, cfg.VNCPort, cfg.VNCPortTotal, cfg.VNCKeymap)
	}
	if err != nil {
		return console{}, vimFault(err)
	}
	host, err := hv.HostName(ctx, vm.Host)
	if err != nil {
		return console{}, vimFault(err)
	}
	return console{host: host, port: port}, nil
}

// mksConsole is the VMware driver's get_mks_console: an "mks" ticket.
func (l *lifecycle) mksConsole(ctx context.Context, inst *ovo.Object) (console, error) {
	hv, err := l.consoleHV()
	if err != nil {
		return console{}, err
	}
	vm, err := l.vmOf(ctx, inst)
	if err != nil {
		return console{}, err
	}
	t, err := hv.AcquireMKSTicket(ctx, vm.Ref)
	if err != nil {
		return console{}, vimFault(err)
	}
	auth, _ := json.Marshal(struct {
		Ticket     string `json:"ticket"`
		CfgFile    string `json:"cfgFile"`
		Thumbprint string `json:"thumbprint"`
	}{t.Ticket, t.CfgFile, strings.ToLower(strings.ReplaceAll(t.SSLThumbprint, ":", ""))})
	// jsonutils.dumps separates with ", " and ": ".
	path := strings.NewReplacer(`","`, `", "`, `":"`, `": "`).Replace(string(auth))
	return console{host: t.Host, port: int(t.Port), internalAccessPath: path}, nil
}

// authorize is ConsoleAuthToken(...).authorize(token_ttl) through
// conductor, then the console's get_connection_info: the reply of the
// get_*_console calls.
func (l *lifecycle) authorize(ctx context.Context, rc rpc.Context, inst *ovo.Object, consoleType, accessURLBase string, c console) (map[string]any, error) {
	tok := ovo.New("ConsoleAuthToken", l.cond.version("ConsoleAuthToken"))
	tok.SetString("console_type", consoleType)
	tok.SetString("host", c.host)
	tok.SetInt("port", int64(c.port))
	if s, ok := c.internalAccessPath.(string); ok {
		tok.SetString("internal_access_path", s)
	} else {
		tok.SetNull("internal_access_path")
	}
	tok.SetString("instance_uuid", inst.StringOrEmpty("uuid"))
	tok.SetString("access_url_base", accessURLBase)
	res, err := l.cond.ObjectAction(ctx, rc, tok, "authorize", []any{l.consoleConfig().TokenTTL}, nil)
	if err != nil {
		return nil, err
	}
	token, _ := res.(string)
	if token == "" {
		token = tok.StringOrEmpty("token")
	}
	return map[string]any{
		"host": c.host, "port": c.port, "internal_access_path": c.internalAccessPath,
		"token": token, "access_url": accessURL(consoleType, accessURLBase, token),
	}, nil
}

// accessURL is ConsoleAuthToken.access_url: noVNC puts the token in the
// path parameter, the other consoles in the query.
func accessURL(consoleType, base, token string) string {
	if consoleType == "novnc" {
		// noVNC ≥ 1.1 reads the token from the "path" parameter.
		return base + "?" + url.Values{"path": {"?token=" + token}}.Encode()
	}
	return fmt.Sprintf("%s?token=%s", base, token)
}

// notReady is nova's InstanceNotFound → InstanceNotReady for a building
// instance.
func notReady(inst *ovo.Object, err error) error {
	var re *rpc.RemoteError
	if errors.As(err, &re) && re.Class == "InstanceNotFound" && inst.StringOrEmpty("vm_state") == "building" {
		uuid := inst.StringOrEmpty("uuid")
		return novaError("InstanceNotReady", fmt.Sprintf("Instance %s is not ready", uuid), 400, map[string]any{"instance_id": uuid})
	}
	return err
}

// GetVNCConsole is get_vnc_console (a call): with [vnc] enabled and type
// novnc, a console token for the VM's VNC port on its ESXi host.
func (l *lifecycle) GetVNCConsole(ctx context.Context, req *rpc.Request) (any, error) {
	cfg := l.consoleConfig()
	return l.remoteConsole(ctx, req, "get_vnc_console", cfg.VNCEnabled, "novnc", cfg.NoVNCProxyBaseURL, l.vncConsole)
}

// GetMKSConsole is get_mks_console (a call): with [mks] enabled (nova's
// default is off) and type webmks, a token for the VM's "mks" ticket. An
// endpoint without AcquireTicket fails as oslo.vmware's
// VimFaultException, which nova-api answers with HTTP 500.
func (l *lifecycle) GetMKSConsole(ctx context.Context, req *rpc.Request) (any, error) {
	cfg := l.consoleConfig()
	return l.remoteConsole(ctx, req, "get_mks_console", cfg.MKSEnabled, "webmks", cfg.MKSProxyBaseURL, l.mksConsole)
}

// remoteConsole is what nova-compute's get_vnc_console and
// get_mks_console share: the console kind enabled, the one type it
// serves, the driver's connection info, a token authorized for it.
func (l *lifecycle) remoteConsole(ctx context.Context, req *rpc.Request, method string, enabled bool, consoleType, baseURL string,
	connect func(context.Context, *ovo.Object) (console, error)) (any, error) {
	var a consoleArgs
	if err := req.DecodeArgs(&a); err != nil {
		return nil, err
	}
	return l.instanceCall(ctx, req, method, func(ctx context.Context, inst *ovo.Object) (any, error) {
		if !enabled {
			return nil, consoleTypeUnavailable(a.ConsoleType)
		}
		if a.ConsoleType != consoleType {
			return nil, consoleTypeInvalid(a.ConsoleType)
		}
		c, err := connect(ctx, inst)
		if err != nil {
			return nil, notReady(inst, err)
		}
		return l.authorize(ctx, req.Context, inst, a.ConsoleType, baseURL, c)
	})
}

// unsupportedConsole answers get_spice_console, get_rdp_console and
// get_serial_console as nova-compute with the VMware driver: the console
// type is unavailable unless enabled (nova's default), and the driver has
// none (NotImplementedError, HTTP 501 from the API) otherwise. Spice and
// RDP check their one valid type first.
func (l *lifecycle) unsupportedConsole(method string, enabled func(ConsoleConfig) bool, validType string) rpc.Handler {
	return func(ctx context.Context, req *rpc.Request) (any, error) {
		var a consoleArgs
		if err := req.DecodeArgs(&a); err != nil {
			return nil, err
		}
		return l.instanceCall(ctx, req, method, func(ctx context.Context, inst *ovo.Object) (any, error) {
			if !enabled(l.consoleConfig()) {
				return nil, consoleTypeUnavailable(a.ConsoleType)
			}
			if validType != "" && a.ConsoleType != validType {
				return nil, consoleTypeInvalid(a.ConsoleType)
			}
			return nil, rpc.BuiltinError("NotImplementedError", "")
		})
	}
}

// GetSpiceConsole is get_spice_console: see unsupportedConsole.
func (l *lifecycle) GetSpiceConsole(ctx context.Context, req *rpc.Request) (any, error) {
	return l.unsupportedConsole("get_spice_console", func(c ConsoleConfig) bool { return c.SpiceEnabled }, "spice-html5")(ctx, req)
}

// GetRDPConsole is get_rdp_console: see unsupportedConsole.
func (l *lifecycle) GetRDPConsole(ctx context.Context, req *rpc.Request) (any, error) {
	return l.unsupportedConsole("get_rdp_console", func(c ConsoleConfig) bool { return c.RDPEnabled }, "rdp-html5")(ctx, req)
}

// GetSerialConsole is get_serial_console: see unsupportedConsole (the
// VMware driver's serial ports go to a VSPC, not to nova's serial proxy).
func (l *lifecycle) GetSerialConsole(ctx context.Context, req *rpc.Request) (any, error) {
	return l.unsupportedConsole("get_serial_console", func(c ConsoleConfig) bool { return c.SerialEnabled }, "")(ctx, req)
}

// ValidateConsolePort is validate_console_port (a call from the console
// proxies): whether port is the instance's current console port. The
// VMware driver only has VNC and MKS consoles; the others raise
// NotImplementedError.
func (l *lifecycle) ValidateConsolePort(ctx context.Context, req *rpc.Request) (any, error) {
	var a consoleArgs
	if err := req.DecodeArgs(&a); err != nil {
		return nil, err
	}
	return l.instanceCall(ctx, req, "validate_console_port", func(ctx context.Context, inst *ovo.Object) (any, error) {
		var (
			c   console
			err error
		)
		switch a.ConsoleType {
		case "spice-html5", "rdp-html5", "serial":
			return nil, rpc.BuiltinError("NotImplementedError", "")
		case "webmks":
			c, err = l.mksConsole(ctx, inst)
		default:
			c, err = l.vncConsole(ctx, inst)
		}
		if err != nil {
			return nil, err
		}
		return strconv.Itoa(c.port) == fmt.Sprint(a.Port), nil
	})
}

// maxConsoleBytes is the VMware driver's MAX_CONSOLE_BYTES.
const maxConsoleBytes = 100 * 1024

// GetConsoleOutput is get_console_output (a call): the VMware driver
// reads the VM's serial log that a VSPC writes to [vmware] serial_log_dir
// (<uuid without dashes>, its last 100 KiB); no log answers "". The reply
// is decoded as ASCII (others replaced), its last tail_length lines if set.
func (l *lifecycle) GetConsoleOutput(ctx context.Context, req *rpc.Request) (any, error) {
	var a struct {
		TailLength any `json:"tail_length"`
	}
	if err := req.DecodeArgs(&a); err != nil {
		return nil, err
	}
	return l.instanceCall(ctx, req, "get_console_output", func(ctx context.Context, inst *ovo.Object) (any, error) {
		dir := l.consoleConfig().SerialLogDir
		var out []byte
		if dir != "" {
			b, err := lastBytes(filepath.Join(dir, strings.ReplaceAll(inst.StringOrEmpty("uuid"), "-", "")), maxConsoleBytes)
			if err != nil && !errors.Is(err, os.ErrNotExist) {
				return nil, rpc.BuiltinError("OSError", err.Error())
			}
			if errors.Is(err, os.ErrNotExist) {
				zerolog.Ctx(ctx).Warn().Msg("The console log is missing. Check your VSPC configuration")
			}
			out = b
		}
		if a.TailLength != nil {
			out = tailLog(out, a.TailLength)
		}
		return asciiReplace(out), nil
	})
}

// lastBytes reads at most n bytes from the end of the file.
func lastBytes(path string, n int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("serial log: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("serial log: %w", err)
	}
	if st.Size() > n {
		if _, err := f.Seek(-n, io.SeekEnd); err != nil {
			return nil, fmt.Errorf("serial log: %w", err)
		}
	}
	b, err := io.ReadAll(f)
	if err != nil {
		return nil, fmt.Errorf("serial log: %w", err)
	}
	return b, nil
}

// tailLog is nova's _tail_log: the last length lines (length not a number
// counts as 0: nothing).
func tailLog(log []byte, length any) []byte {
	n, err := strconv.Atoi(strings.TrimSpace(fmt.Sprint(length)))
	if f, ok := length.(float64); ok {
		n, err = int(f), nil
	}
	if err != nil || n == 0 {
		return nil
	}
	lines := strings.Split(string(log), "\n")
	if n > 0 && n < len(lines) {
		lines = lines[len(lines)-n:]
	} else if n < 0 && -n < len(lines) {
		lines = lines[-n:]
	} else if n < 0 {
		lines = nil
	}
	return []byte(strings.Join(lines, "\n"))
}

// asciiReplace is bytes.decode('ascii', 'replace').
func asciiReplace(b []byte) string {
	var s strings.Builder
	for _, c := range b {
		if c < 0x80 {
			s.WriteByte(c)
		} else {
			s.WriteRune('\uFFFD')
		}
	}
	return s.String()
}
