package vcenter

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/vmware/govmomi/fault"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// failingPowerOnVM is a simulated VM whose power-on task fails.
type failingPowerOnVM struct {
	*simulator.VirtualMachine
}

func (vm *failingPowerOnVM) PowerOnVMTask(ctx *simulator.Context, req *types.PowerOnVM_Task) soap.HasFault {
	task := simulator.CreateTask(req.This, "powerOn", func(*simulator.Task) (types.AnyType, types.BaseMethodFault) {
		return nil, &types.InsufficientHostCpuCapacityFault{}
	})
	return &methods.PowerOnVM_TaskBody{Res: &types.PowerOnVM_TaskResponse{Returnval: task.Run(ctx)}}
}

func TestTaskFault(t *testing.T) {
	t.Parallel()
	e := newVMEnv(t)
	ctx := t.Context()
	vm := e.create(t, "7a3f5f0e-0d3c-4a4e-9d43-3f1c8d7f0b01")

	reg := e.sim.model.Map()
	orig := reg.Get(vm.Ref.Reference()).(*simulator.VirtualMachine)
	reg.Put(&failingPowerOnVM{orig})
	err := e.s.PowerOn(ctx, vm.Ref)
	reg.Put(orig)

	var te *TaskError
	if !errors.As(err, &te) {
		t.Fatalf("PowerOn = %v, want a *TaskError", err)
	}
	if te.Fault != "InsufficientHostCpuCapacityFault" || te.Task.Type != "Task" || te.Op != "power on vm "+vm.Ref.Value {
		t.Errorf("TaskError = %+v", te)
	}
	if !fault.Is(err, &types.InsufficientHostCpuCapacityFault{}) {
		t.Errorf("fault.Is(%v, InsufficientHostCpuCapacityFault) = false", err)
	}
	var ir types.BaseInsufficientResourcesFault
	if _, ok := fault.As(err, &ir); !ok {
		t.Errorf("fault.As(%v, InsufficientResourcesFault) = false", err)
	}
	// The restored VM powers on.
	if err := e.s.PowerOn(ctx, vm.Ref); err != nil {
		t.Fatalf("PowerOn after restore: %v", err)
	}
}

func TestTaskFaultInjectedSynchronously(t *testing.T) {
	t.Parallel()
	e := newVMEnv(t)
	ctx := t.Context()
	vm := e.create(t, "7a3f5f0e-0d3c-4a4e-9d43-3f1c8d7f0b02")
	e.sim.model.Service.AddFaultRule(&simulator.FaultInjectionRule{
		MethodName: "PowerOnVM_Task", ObjectType: "VirtualMachine", ObjectName: "*",
		Probability: 1, FaultType: simulator.FaultTypeInsufficientResourcesFault,
		MaxCount: 1, Enabled: true,
	})
	// vcsim injects the fault into the SOAP call, not the task: it is not
	// a TaskError but still a vSphere fault.
	err := e.s.PowerOn(ctx, vm.Ref)
	var te *TaskError
	if err == nil || errors.As(err, &te) || !fault.Is(err, &types.InsufficientResourcesFault{}) {
		t.Fatalf("PowerOn = %v, want a synchronous InsufficientResourcesFault", err)
	}
	if err := e.s.PowerOn(ctx, vm.Ref); err != nil {
		t.Fatalf("PowerOn after the one injected fault: %v", err)
	}
}

func TestWaitTask(t *testing.T) {
	t.Parallel()
	e := newVMEnv(t)
	ctx := t.Context()
	vm := e.create(t, "7a3f5f0e-0d3c-4a4e-9d43-3f1c8d7f0b03")
	c := e.s.Client()

	start := func() Ref {
		r, err := methods.PowerOnVM_Task(ctx, c, &types.PowerOnVM_Task{This: vm.Ref.Reference()})
		if err != nil {
			t.Fatal(err)
		}
		return refFrom(r.Returnval)
	}
	res, err := e.s.WaitTask(ctx, "power on", start())
	if err != nil || res.Task.Type != "Task" {
		t.Fatalf("WaitTask = %+v, %v", res, err)
	}
	// Same state: vcsim fails the task with InvalidPowerState.
	polls := e.s.TaskPolls()
	d := vmMeasure(t, e.s, "failing task", func() error {
		_, err = e.s.WaitTask(ctx, "power on again", start())
		return nil
	})
	var te *TaskError
	if !errors.As(err, &te) || te.Fault != "InvalidPowerState" || te.Op != "power on again" {
		t.Fatalf("WaitTask = %v, want TaskError InvalidPowerState", err)
	}
	var ips *types.InvalidPowerState
	if _, ok := fault.As(err, &ips); !ok || ips.ExistingState != types.VirtualMachinePowerStatePoweredOn {
		t.Errorf("fault.As InvalidPowerState = %v, %+v", ok, ips)
	}
	if d["PowerOnVM_Task"] != 1 || d["RetrievePropertiesEx"] < 1 || vmTotal(d) > 7 {
		t.Errorf("calls = %v, want PowerOnVM_Task + 1-6 polls", d)
	}
	if n := e.s.TaskPolls() - polls; n != d["RetrievePropertiesEx"] {
		t.Errorf("TaskPolls grew by %d, want %d (every property read of WaitTask is a poll)", n, d["RetrievePropertiesEx"])
	}

	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := e.s.WaitTask(cctx, "cancelled", Ref{Type: "Task", Value: "task-none"}); err == nil {
		t.Error("WaitTask with a cancelled context succeeded")
	}
}

// TestTaskBudget starts more tasks at once than the budget allows and checks
// that exactly MaxTasks of them run together: the others wait for a slot
// before they are started.
func TestTaskBudget(t *testing.T) {
	t.Parallel()
	sim := startSim(t, SimulatorConfig{Clusters: 1, HostsPerCluster: 1, Datastores: 1})
	cfg := simConfig(sim)
	cfg.MaxTasks = 2
	s := login(t, cfg)
	ctx := t.Context()
	c, dc, err := s.fileOp(ctx, "budget test", "DC0")
	if err != nil {
		t.Fatal(err)
	}

	const tasks = 6
	var (
		mu      sync.Mutex
		running int
		peak    int
	)
	gate := make(chan struct{})
	var wg sync.WaitGroup
	for i := range tasks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _ = s.runTask(ctx, c, "budget test", func() (types.ManagedObjectReference, error) {
				mu.Lock()
				running++
				peak = max(peak, running)
				mu.Unlock()
				<-gate
				mu.Lock()
				running--
				mu.Unlock()
				res, err := methods.DeleteDatastoreFile_Task(ctx, c, &types.DeleteDatastoreFile_Task{
					This: *c.ServiceContent.FileManager, Name: fmt.Sprintf("[LocalDS_0] missing-%d", i), Datacenter: &dc,
				})
				if err != nil {
					return types.ManagedObjectReference{}, err
				}
				return res.Returnval, nil
			})
		}()
	}
	waitFor(t, 5*time.Second, "two tasks starting", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return running == 2
	})
	time.Sleep(50 * time.Millisecond) // room for a third to start if the budget leaked
	if got := s.TasksInFlight(); got != 2 {
		t.Errorf("TasksInFlight = %d, want 2", got)
	}
	close(gate)
	wg.Wait()
	if peak != 2 {
		t.Errorf("peak concurrent task starts = %d, want the budget, 2", peak)
	}
	if got := s.TasksInFlight(); got != 0 {
		t.Errorf("TasksInFlight after all ended = %d, want 0", got)
	}
}

// TestTaskPollSchedule: how many polls a task costs by how long it runs.
// A task the simulator finishes at once costs one poll; long tasks are
// polled about every 0.5 s, as oslo.vmware does.
func TestTaskPollSchedule(t *testing.T) {
	t.Parallel()
	polls := func(d time.Duration) int {
		var at time.Duration
		for n := 0; ; n++ {
			at += taskPollDelay(n)
			if at >= d {
				return n + 1
			}
		}
	}
	tests := []struct {
		task time.Duration
		want int
	}{
		{0, 1},
		{20 * time.Millisecond, 1},
		{100 * time.Millisecond, 2},
		{500 * time.Millisecond, 3},
		{time.Second, 4},
		{10 * time.Second, 22},
		{time.Minute, 122},
	}
	for _, tc := range tests {
		if got := polls(tc.task); got != tc.want {
			t.Errorf("a %s task costs %d polls, want %d", tc.task, got, tc.want)
		}
	}
}
