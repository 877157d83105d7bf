// The corral Administrator Console: log in with the agent's token, then a tree of the pool
// (hosts, VMs with state icons, templates, repositories, networks, ISOs) beside the
// selected VM's actions and tabs (Overview, Graphical Console, Text Console, History).
// Everything goes through the public HTTP API (api.ts) and one event stream (model.ts).

import { render } from "preact";
import { useEffect, useState } from "preact/hooks";
import "@xterm/xterm/css/xterm.css";
import "./style.css";
import { api, ApiError, setCsrf, whenUnauthorized } from "./api";
import { model, useModel } from "./state";
import { ICON, Tree } from "./tree";
import { Toolbar } from "./actions";
import { Overview } from "./overview";
import { History } from "./history";
import { GraphicalConsole, TextConsole } from "./consoles";
import { Wizard } from "./wizard";

function Login({ onDone }: { onDone: () => void }) {
  const [token, setToken] = useState("");
  const [error, setError] = useState("");
  const submit = async (e: Event) => {
    e.preventDefault();
    setError("");
    try {
      const s = await api<{ csrf: string }>("POST", "/v1/session", { token });
      setCsrf(s.csrf);
      onDone();
    } catch (err) {
      setError(err instanceof ApiError ? err.message : String(err));
    }
  };
  return (
    <form class="login" onSubmit={submit}>
      <h1>corral</h1>
      <p>Log in with the agent's token (STATE_DIR/token on the host).</p>
      <input
        id="token"
        type="password"
        autocomplete="current-password"
        placeholder="token"
        value={token}
        onInput={(e) => setToken((e.target as HTMLInputElement).value)}
      />
      <button type="submit">Log in</button>
      {error && (
        <p class="error" id="login-error" role="alert">
          {error}
        </p>
      )}
    </form>
  );
}

// ---- app ----

type Tab = "overview" | "graphical" | "text" | "history";

function Main({ onLogout }: { onLogout: () => void }) {
  useModel();
  const [selected, setSelected] = useState<string | null>(null);
  const [tab, setTab] = useState<Tab>("overview");
  const [wizard, setWizard] = useState(false);
  const [lastTask, setLastTask] = useState<string | null>(null);
  const vm = selected ? model.vms.get(selected) ?? null : null;
  const task = lastTask ? model.tasks.get(lastTask) : undefined;
  const running = vm?.power_state === "running" || vm?.power_state === "paused";
  return (
    <div class="app">
      <header>
        <b>corral</b> Administrator Console
        <span class={`live ${model.live ? "on" : "off"}`} data-testid="live">
          {model.live ? "live" : "reconnecting…"}
        </span>
        <button id="new-vm" onClick={() => setWizard(true)}>
          New VM…
        </button>
        <button
          id="logout"
          onClick={async () => {
            try {
              await api("DELETE", "/v1/session");
            } finally {
              onLogout();
            }
          }}
        >
          Log out
        </button>
      </header>
      <div class="body">
        <Tree selected={selected} onSelect={(n) => setSelected(n)} />
        <main>
          {vm ? (
            <>
              <h2 data-testid="vm-title">
                <span class={`icon ${vm.power_state}`}>{ICON[vm.power_state] ?? "…"}</span> {vm.name}{" "}
                <small>{vm.description}</small>
              </h2>
              <Toolbar vm={vm} onTask={setLastTask} onDeleted={() => setSelected(null)} />
              {task && (
                <div class="last-task" data-testid="last-task" data-state={task.state}>
                  {task.operation}: {task.state} {task.phase}
                  <progress max={1} value={task.progress} />
                  {task.error && <span class="error"> {task.error.message}</span>}
                </div>
              )}
              <nav class="tabs">
                {(["overview", "graphical", "text", "history"] as Tab[]).map((t) => (
                  <button id={`tab-${t}`} class={tab === t ? "active" : ""} onClick={() => setTab(t)}>
                    {{ overview: "Overview", graphical: "Graphical Console", text: "Text Console", history: "History" }[t]}
                  </button>
                ))}
              </nav>
              <section class="tab-body">
                {tab === "overview" && <Overview vm={vm} onTask={setLastTask} />}
                {tab === "graphical" && <GraphicalConsole key={`g-${vm.name}`} vm={vm.name} running={running} />}
                {tab === "text" && <TextConsole key={`t-${vm.name}`} vm={vm.name} running={running} />}
                {tab === "history" && <History vm={vm} />}
              </section>
            </>
          ) : (
            <>
              <h2>All tasks</h2>
              <History vm={null} />
            </>
          )}
        </main>
      </div>
      {wizard && (
        <Wizard
          model={model}
          onClose={() => setWizard(false)}
          onCreated={(name, task) => {
            setWizard(false);
            setSelected(name);
            if (task) setLastTask(task);
          }}
        />
      )}
    </div>
  );
}

function App() {
  const [phase, setPhase] = useState<"checking" | "login" | "app">("checking");
  useEffect(() => {
    whenUnauthorized(() => {
      model.close();
      setPhase("login");
    });
    // A reloaded page with a live session goes straight in.
    api<{ csrf: string }>("GET", "/v1/session")
      .then((s) => {
        setCsrf(s.csrf);
        setPhase("app");
      })
      .catch(() => setPhase("login"));
  }, []);
  useEffect(() => {
    if (phase === "app") {
      model.start().catch(() => {});
      return () => model.close();
    }
  }, [phase]);
  if (phase === "checking") return <div class="loading">…</div>;
  if (phase === "login") return <Login onDone={() => setPhase("app")} />;
  return <Main onLogout={() => setPhase("login")} />;
}

// For the benchmark and tests: the model's last applied event.
(window as any).__corral = model;
render(<App />, document.getElementById("app")!);
