// Command vcagent joins an OpenStack cloud's RabbitMQ bus as nova-compute
// (VMware vCenter driver) for the clusters of one vCenter. It reads the
// services' own oslo.config files (VCAGENT_CONFIG_FILE, --config-file) and
// VCAGENT_* environment variables, which win; `vcagent --help` lists them
// and `vcagent config` prints the effective configuration.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/mattn/go-isatty"
	"github.com/rs/zerolog"

	"github.com/vcagent/vcagent/agent"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	files, rest, err := agent.ParseConfigArgs(args)
	if err != nil {
		fmt.Fprintf(stderr, "vcagent: %v\n", err)
		return 2
	}
	showConfig := false
	for i, a := range rest {
		switch {
		case a == "-h" || a == "--help" || a == "help":
			fmt.Fprint(stdout, agent.Usage())
			return 0
		case a == "config" && i == 0:
			showConfig = true
		default:
			fmt.Fprintf(stderr, "vcagent: unknown argument %q (see --help)\n", a)
			return 2
		}
	}
	cfg, err := agent.Load(agent.LoadOptions{Files: files})
	if err != nil {
		fmt.Fprintf(stderr, "vcagent: %v\n", err)
		return 2
	}
	if showConfig {
		fmt.Fprint(stdout, cfg.Effective())
		return 0
	}
	log := newLogger(cfg, stderr)
	if len(cfg.ConfigFiles) > 0 {
		log.Info().Strs("config_files", cfg.ConfigFiles).Int("unused_options", len(cfg.Unused())).Msg("configuration files read")
	}
	for _, u := range cfg.Unused() {
		log.Debug().Str("file", u.File).Str("section", u.Section).Str("option", u.Option).Msg("config file option not used by vcagent")
	}

	// The first SIGTERM or SIGINT starts the drain; a second one exits at once.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	go func() {
		<-ctx.Done()
		stop() // restore default handling so that the next signal kills us
		again := make(chan os.Signal, 1)
		signal.Notify(again, syscall.SIGTERM, syscall.SIGINT)
		<-again
		log.Warn().Msg("second signal: exiting without draining")
		os.Exit(1)
	}()

	a, err := agent.New(cfg, log)
	if err != nil {
		log.Error().Err(err).Msg("cannot start")
		return 2
	}
	start := time.Now()
	if err := a.Run(ctx); err != nil {
		log.Error().Err(err).Msg("agent stopped with an error")
		return 1
	}
	log.Info().Dur("uptime", time.Since(start)).Msg("agent stopped")
	return 0
}

// newLogger writes JSON lines, or a human console format on a terminal.
func newLogger(cfg agent.Config, w io.Writer) zerolog.Logger {
	zerolog.TimeFieldFormat = time.RFC3339Nano
	out := w
	console := cfg.LogFormat == "console"
	if cfg.LogFormat == "auto" {
		if f, ok := w.(*os.File); ok && isatty.IsTerminal(f.Fd()) {
			console = true
		}
	}
	if console {
		out = zerolog.ConsoleWriter{Out: w, TimeFormat: "15:04:05.000"}
	}
	return zerolog.New(out).Level(cfg.Level()).With().Timestamp().Str("service", "vcagent").Logger()
}
