// The two consoles of a VM, each over a websocket opened with a one-time ticket
// (POST /v1/vms/NAME/console-ticket, then wss://.../vnc?ticket=... or /console/ws?ticket=...).
//
// Both reconnect by themselves: when the websocket closes (QEMU exited, the agent
// restarted) they try again as soon as the VM is known to run (the event stream says so),
// a few times with a short pause (a guest reboot keeps QEMU and so the connection; a
// stop/start or, later, a migration gives a new QEMU and a new VNC port).

import { useEffect, useRef, useState } from "preact/hooks";
// noVNC ships CommonJS in lib/; its ES sources are not in the npm package.
// @ts-ignore: no type declarations
import RFBImport from "@novnc/novnc/lib/rfb.js";
import { Terminal } from "@xterm/xterm";
import { FitAddon } from "@xterm/addon-fit";
import { api, ApiError } from "./api";

// eslint-disable-next-line @typescript-eslint/no-explicit-any
const RFB: any = (RFBImport as any).default ?? RFBImport;

interface TicketAnswer {
  ticket: string;
  path: string;
  expires_in_ms: number;
}

function wsUrl(path: string): string {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  return `${proto}//${location.host}${path}`;
}

async function ticket(vm: string, kind: "vnc" | "serial"): Promise<string> {
  const t = await api<TicketAnswer>("POST", `/v1/vms/${encodeURIComponent(vm)}/console-ticket`, { kind });
  return wsUrl(t.path);
}

const RETRY_MS = 400;
const RETRIES = 10;

/** Reconnect policy shared by both consoles. */
function useReconnect(vm: string, running: boolean, open: (done: () => void) => Promise<() => void>) {
  const [status, setStatus] = useState("connecting");
  const [connects, setConnects] = useState(0);
  const gen = useRef(0);
  useEffect(() => {
    if (!running) {
      setStatus("the VM is not running");
      return;
    }
    const my = ++gen.current;
    let close: (() => void) | null = null;
    let tries = 0;
    const attempt = async () => {
      if (gen.current !== my) return;
      setStatus(tries === 0 ? "connecting" : "reconnecting");
      try {
        close = await open(() => {
          // Closed by the other side: try again (the VM may be restarting).
          if (gen.current !== my) return;
          setStatus("reconnecting");
          tries = 0;
          setTimeout(attempt, RETRY_MS);
        });
        tries = 0;
        setConnects((c) => c + 1);
        setStatus("connected");
      } catch (e) {
        tries++;
        if (tries < RETRIES && gen.current === my) setTimeout(attempt, RETRY_MS);
        else setStatus(e instanceof ApiError ? e.message : String(e));
      }
    };
    attempt();
    return () => {
      gen.current++;
      close?.();
    };
  }, [vm, running]);
  return { status, connects };
}

export function GraphicalConsole({ vm, running }: { vm: string; running: boolean }) {
  const screen = useRef<HTMLDivElement>(null);
  const rfbRef = useRef<any>(null);
  const [scale, setScale] = useState(true);
  const [paste, setPaste] = useState("");
  const { status, connects } = useReconnect(vm, running, async (closed) => {
    const url = await ticket(vm, "vnc");
    return new Promise((resolve, reject) => {
      const rfb = new RFB(screen.current, url, { shared: true });
      rfb.scaleViewport = scale;
      rfb.background = "#111";
      let up = false;
      rfb.addEventListener("connect", () => {
        up = true;
        rfbRef.current = rfb;
        resolve(() => rfb.disconnect());
      });
      rfb.addEventListener("disconnect", () => {
        if (rfbRef.current === rfb) rfbRef.current = null;
        if (up) closed();
        else reject(new Error("the graphical console refused the connection"));
      });
    });
  });
  useEffect(() => {
    if (rfbRef.current) rfbRef.current.scaleViewport = scale;
  }, [scale]);
  const sendPaste = () => {
    const rfb = rfbRef.current;
    if (!rfb) return;
    for (const ch of paste) {
      const code = ch.codePointAt(0) ?? 0;
      // X keysyms: Latin-1 is the code itself, other Unicode is 0x01000000 + code; newline is Return.
      const keysym = ch === "\n" ? 0xff0d : code < 0x100 ? code : 0x01000000 + code;
      rfb.sendKey(keysym, null);
    }
    setPaste("");
  };
  return (
    <div class="console">
      <div class="console-bar">
        <span class="console-status" data-testid="vnc-status" data-connects={connects}>
          {status}
        </span>
        <button onClick={() => rfbRef.current?.sendCtrlAltDel()} disabled={!rfbRef.current}>
          Ctrl-Alt-Del
        </button>
        <label>
          <input type="checkbox" checked={scale} onChange={(e) => setScale((e.target as HTMLInputElement).checked)} />{" "}
          scale to window
        </label>
        <input
          class="paste"
          placeholder="paste as keystrokes"
          value={paste}
          onInput={(e) => setPaste((e.target as HTMLInputElement).value)}
        />
        <button onClick={sendPaste} disabled={!paste}>
          Type it
        </button>
      </div>
      <div class="vnc-screen" ref={screen} data-testid="vnc-screen" />
    </div>
  );
}

export function TextConsole({ vm, running }: { vm: string; running: boolean }) {
  const host = useRef<HTMLDivElement>(null);
  const term = useRef<Terminal | null>(null);
  useEffect(() => {
    const t = new Terminal({ scrollback: 10000, convertEol: false, fontSize: 13, cursorBlink: true });
    const fit = new FitAddon();
    t.loadAddon(fit);
    if (host.current) t.open(host.current);
    try {
      fit.fit();
    } catch {
      /* not laid out yet */
    }
    term.current = t;
    const onResize = () => {
      try {
        fit.fit();
      } catch {
        /* hidden */
      }
    };
    window.addEventListener("resize", onResize);
    return () => {
      window.removeEventListener("resize", onResize);
      t.dispose();
      term.current = null;
    };
  }, [vm]);
  const { status, connects } = useReconnect(vm, running, async (closed) => {
    const url = await ticket(vm, "serial");
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url);
      ws.binaryType = "arraybuffer";
      const enc = new TextEncoder();
      let sub: { dispose(): void } | null = null;
      let up = false;
      ws.onopen = () => {
        up = true;
        // The agent sends the scroll-back first: start from a clean screen.
        term.current?.reset();
        sub = term.current?.onData((d) => ws.readyState === WebSocket.OPEN && ws.send(enc.encode(d))) ?? null;
        resolve(() => {
          sub?.dispose();
          ws.close();
        });
      };
      ws.onmessage = (m) => {
        const data = new Uint8Array(m.data as ArrayBuffer);
        term.current?.write(data);
        // A plain-text copy (hidden) that the browser test reads: xterm.js draws rows of
        // spans, which are awkward to search for a marker.
        const mirror = host.current?.parentElement?.querySelector(".serial-text");
        if (mirror) mirror.textContent = (mirror.textContent + new TextDecoder().decode(data)).slice(-20000);
      };
      ws.onclose = () => {
        sub?.dispose();
        if (up) closed();
        else reject(new Error("the text console refused the connection"));
      };
    });
  });
  return (
    <div class="console">
      <div class="console-bar">
        <span class="console-status" data-testid="serial-status" data-connects={connects}>
          {status}
        </span>
      </div>
      <div class="xterm-host" ref={host} />
      <pre class="serial-text" hidden data-testid="serial-text" />
    </div>
  );
}
