import { useEffect, useReducer, useRef, useState, type FormEvent, type KeyboardEvent } from "react";
import { Link, useLocation, useParams } from "react-router";
import { ApiError, canWrite, nsPath, request } from "../api";
import { ErrorBox, Fields, Loading, Section, Time } from "../components";
import { useConnection } from "../connection";
import { uiPath } from "../kinds";
import { follow, type StreamEvent, type StreamStatus } from "../sse";
import { sessionPath } from "./Agent";

interface ToolCall {
  id: string;
  name: string;
  arguments: unknown;
}
interface Message {
  seq: number;
  role: string;
  content: string;
  toolCalls?: ToolCall[];
  toolCallId?: string;
  turnId: string | null;
  createdAt?: string;
}
interface Step {
  index: number;
  name: string;
  kind: string;
  state: string;
  startedAt?: string | null;
  completedAt?: string | null;
  provider?: string | null;
  toolCalls?: string[];
  isError?: boolean;
  error?: string;
  // A tool step's call as the stream carries it (bounded previews; the history has it all).
  tool?: string;
  callId?: string;
  arguments?: string;
  argumentsTruncated?: number;
  result?: string;
  resultTruncated?: number;
  documents?: { name?: string; document?: string; version?: string | number; chunks?: number[] }[];
}
interface Turn {
  id: string;
  state: string;
  steps: Record<number, Step>;
  text: string; // the answer as it streams (message.delta)
  provider?: string | null;
  error?: string;
  source?: string;
  notices: string[];
}
interface TurnView {
  id: string;
  state: string;
  source: string;
  provider: string | null;
  error: { message?: string } | null;
  steps?: { index: number; name: string; kind: string; state: string; startedAt: string | null; completedAt: string | null }[];
}
interface SessionView {
  id: string;
  agent: string;
  ns: string;
  status: string;
  metadata: Record<string, unknown>;
  activeTurn: TurnView | null;
  queuedTurns: number;
  messageCount: number;
  lastEventId: number;
  createdAt: string;
  updatedAt: string;
}

interface State {
  messages: Record<number, Message>;
  turns: Record<string, Turn>;
}
type Action = { type: "messages"; items: Message[] } | { type: "event"; event: StreamEvent } | { type: "turn"; view: TurnView };

const OPEN = new Set(["queued", "running"]);

function emptyTurn(id: string): Turn {
  return { id, state: "queued", steps: {}, text: "", notices: [] };
}

function reduce(state: State, action: Action): State {
  switch (action.type) {
    case "messages": {
      const messages = { ...state.messages };
      for (const m of action.items) messages[m.seq] = m;
      return { ...state, messages };
    }
    case "turn": {
      const v = action.view;
      const turn = { ...(state.turns[v.id] ?? emptyTurn(v.id)) };
      turn.state = OPEN.has(turn.state) || !state.turns[v.id] ? v.state : turn.state;
      turn.provider = v.provider ?? turn.provider;
      turn.source = v.source;
      if (v.error?.message) turn.error = v.error.message;
      const steps = { ...turn.steps };
      for (const s of v.steps ?? []) steps[s.index] = { ...s, ...steps[s.index] };
      turn.steps = steps;
      return { ...state, turns: { ...state.turns, [v.id]: turn } };
    }
    case "event":
      return applyEvent(state, action.event);
  }
}

function applyEvent(state: State, event: StreamEvent): State {
  const data = event.data ?? {};
  if (event.type === "message.created") {
    if (state.messages[data.seq]) return state;
    const message: Message = { seq: data.seq, role: data.role, content: data.content, turnId: event.turnId, createdAt: event.createdAt };
    return { ...state, messages: { ...state.messages, [data.seq]: message } };
  }
  if (!event.turnId) return state;
  const turn: Turn = { ...(state.turns[event.turnId] ?? emptyTurn(event.turnId)) };
  switch (event.type) {
    case "turn.queued":
      turn.source = data.source;
      break;
    case "turn.started":
      turn.state = "running";
      break;
    case "turn.completed":
      turn.state = "completed";
      turn.provider = data.provider;
      break;
    case "turn.failed":
      turn.state = "failed";
      turn.error = data.message ?? data.code;
      break;
    case "turn.cancelled":
      turn.state = "cancelled";
      turn.error = data.reason;
      break;
    case "step.started":
    case "step.completed":
    case "step.failed": {
      const previous = turn.steps[data.index] ?? { index: data.index, name: data.step, kind: data.kind, state: "started" };
      const step: Step = { ...previous, name: data.step, kind: data.kind ?? previous.kind };
      if (data.arguments !== undefined) {
        step.tool = data.tool;
        step.callId = data.callId;
        step.arguments = data.arguments;
        step.argumentsTruncated = data.argumentsTruncated;
      }
      if (event.type === "step.started") {
        step.state = "started";
        step.startedAt = event.createdAt;
      } else {
        step.state = event.type === "step.completed" ? "completed" : "failed";
        step.completedAt = event.createdAt;
        step.provider = data.provider ?? step.provider;
        step.toolCalls = data.toolCalls ?? step.toolCalls;
        step.isError = data.isError;
        step.error = data.error;
        step.documents = data.documents ?? step.documents;
        if (data.result !== undefined) {
          step.result = data.result;
          step.resultTruncated = data.resultTruncated;
        }
      }
      turn.steps = { ...turn.steps, [data.index]: step };
      if (turn.state === "queued") turn.state = "running";
      break;
    }
    case "message.delta":
      turn.text = data.reset ? data.text : turn.text + data.text;
      break;
    case "tools.unavailable":
      turn.notices = [
        ...turn.notices,
        ...(data.sources ?? []).map((s: { source?: string; error?: string }) => `tools unavailable: ${s.source ?? ""}: ${s.error ?? ""}`),
      ];
      break;
    default:
      return state;
  }
  return { ...state, turns: { ...state.turns, [turn.id]: turn } };
}

function millis(iso: string | null | undefined): number | null {
  if (!iso) return null;
  // Event times carry microseconds; Date wants at most milliseconds.
  const t = Date.parse(iso.replace(/(\.\d{3})\d+/, "$1"));
  return Number.isNaN(t) ? null : t;
}

function duration(step: Step): string {
  const start = millis(step.startedAt);
  const end = millis(step.completedAt);
  if (start === null || end === null) return "";
  const ms = Math.max(0, end - start);
  // Event times are commit times: a step that starts and ends in one transaction (the
  // knowledge lookup, the final write) shows none rather than a made-up 0 ms.
  if (ms === 0) return "";
  return ms < 1000 ? `${ms} ms` : `${(ms / 1000).toFixed(2)} s`;
}

async function allMessages(gw: { url: string; token: string }, base: string, after: number, signal?: AbortSignal): Promise<Message[]> {
  const items: Message[] = [];
  let cursor = after;
  for (let page = 0; page < 20; page++) {
    const list = await request<{ items: Message[]; nextAfter: number | null }>(gw, "GET", `${base}/messages?after=${cursor}&limit=500`, { signal });
    items.push(...list.items);
    if (list.nextAfter == null) break;
    cursor = list.nextAfter;
  }
  return items;
}

export function SessionPage() {
  const { ns = "", agent = "", id = "" } = useParams();
  const { gateway, who } = useConnection();
  const location = useLocation();
  const base = nsPath(ns, "agents", agent, "sessions", id);
  const [session, setSession] = useState<SessionView | null>(null);
  const [loadError, setLoadError] = useState<Error | null>(null);
  const [state, dispatch] = useReducer(reduce, { messages: {}, turns: {} });
  const [status, setStatus] = useState<StreamStatus | null>(null);
  const [generation, setGeneration] = useState(0);
  const lastSeq = useRef(0);

  // Load the session and its history, then follow its stream from the session's last event.
  useEffect(() => {
    if (!gateway) return;
    const abort = new AbortController();
    setLoadError(null);
    (async () => {
      try {
        const view = await request<SessionView>(gateway, "GET", base, { signal: abort.signal });
        setSession(view);
        const messages = await allMessages(gateway, base, 0, abort.signal);
        lastSeq.current = messages.reduce((m, x) => Math.max(m, x.seq), 0);
        dispatch({ type: "messages", items: messages });
        if (view.activeTurn) {
          const turn = await request<TurnView>(gateway, "GET", `${base}/turns/${view.activeTurn.id}`, { signal: abort.signal });
          dispatch({ type: "turn", view: turn });
        }
        await follow({
          url: `${gateway.url}${base}/stream`,
          token: gateway.token,
          after: view.lastEventId,
          signal: abort.signal,
          onStatus: setStatus,
          onEvent: (event) => {
            dispatch({ type: "event", event });
            if (event.type === "turn.completed" || event.type === "turn.failed" || event.type === "turn.cancelled") {
              // The turn's messages (whole tool calls and results) are written now: fetch them.
              allMessages(gateway, base, lastSeq.current)
                .then((items) => {
                  lastSeq.current = items.reduce((m, x) => Math.max(m, x.seq), lastSeq.current);
                  dispatch({ type: "messages", items });
                })
                .catch(() => {});
            }
          },
        });
      } catch (e) {
        if ((e as Error).name !== "AbortError") setLoadError(e as Error);
      }
    })();
    return () => abort.abort();
  }, [gateway, base, generation]);

  // A link from a schedule's fire names the turn it woke (#turn-<id>).
  useEffect(() => {
    if (location.hash) document.getElementById(location.hash.slice(1))?.scrollIntoView();
  }, [location.hash, state.messages]);

  const messages = Object.values(state.messages).sort((a, b) => a.seq - b.seq);
  const openTurns = Object.values(state.turns).filter((t) => OPEN.has(t.state));
  const writable = canWrite(who);

  if (loadError) {
    return (
      <div>
        <SessionHeader ns={ns} agent={agent} id={id} />
        <ErrorBox error={loadError} />
        {loadError instanceof ApiError && loadError.status === 404 && writable && gateway ? (
          <button
            type="button"
            onClick={async () => {
              try {
                await request(gateway, "POST", nsPath(ns, "agents", agent, "sessions"), { body: { id } });
                setGeneration((g) => g + 1);
              } catch (e) {
                setLoadError(e as Error);
              }
            }}
          >
            Create session {id}
          </button>
        ) : null}
      </div>
    );
  }
  if (!session) return <Loading what={`session ${id}`} />;

  // The history, with each turn's steps after the message that started it.
  const shownTurns = new Set<string>();
  const rows: React.ReactNode[] = [];
  for (const m of messages) {
    // A loaded turn shows its tool calls and results on its steps; past turns in the history.
    const onSteps = m.turnId && state.turns[m.turnId] && (m.role === "tool" || (m.role === "assistant" && !m.content));
    if (!onSteps) rows.push(<MessageRow key={`m${m.seq}`} message={m} />);
    if (m.role === "user" && m.turnId && !shownTurns.has(m.turnId)) {
      shownTurns.add(m.turnId);
      const own = messages.filter((x) => x.turnId === m.turnId);
      rows.push(<TurnPanel key={`t${m.turnId}`} turnId={m.turnId} turn={state.turns[m.turnId]} messages={own} base={base} dispatch={dispatch} />);
    }
  }

  return (
    <div className="session">
      <SessionHeader ns={ns} agent={agent} id={id} />
      <Fields
        rows={[
          ["Agent", <Link to={uiPath(ns, "agents", agent)}>{agent}</Link>],
          ["Status", session.status],
          ["Metadata", Object.keys(session.metadata).length ? JSON.stringify(session.metadata) : ""],
          ["Created", <Time iso={session.createdAt} />],
        ]}
      />
      <StreamIndicator status={status} onRetry={() => setGeneration((g) => g + 1)} />
      <Section title="Conversation">
        <ol className="chat" aria-label="Messages">
          {rows}
        </ol>
        {messages.length === 0 ? <p className="muted">No messages yet.</p> : null}
      </Section>
      {writable ? <Composer base={base} openTurns={openTurns.length} /> : null}
    </div>
  );
}

function SessionHeader({ ns, agent, id }: { ns: string; agent: string; id: string }) {
  return (
    <>
      <p className="crumbs">
        <Link to={uiPath(ns, "agents")}>Agents</Link> / <Link to={uiPath(ns, "agents", agent)}>{agent}</Link> /{" "}
        <Link to={sessionPath(ns, agent)}>sessions</Link>
        /
      </p>
      <h1>
        <span className="muted">Session</span> {id}
      </h1>
    </>
  );
}

function StreamIndicator({ status, onRetry }: { status: StreamStatus | null; onRetry: () => void }) {
  if (!status) return null;
  let text: string;
  let cls = "stream-status";
  switch (status.state) {
    case "connecting":
      text = "Connecting to the stream…";
      break;
    case "live":
      text = status.resumed ? `Live (resumed after event ${status.after})` : "Live";
      cls += " live";
      break;
    case "reconnecting":
      text = `Connection lost; reconnecting, resuming after event ${status.after}…`;
      cls += " reconnecting";
      break;
    case "ended":
      text = `Stream ended: ${status.message}`;
      cls += " ended";
      break;
  }
  return (
    <p className={cls} role="status" aria-label="Stream status" data-state={status.state}>
      <span className="dot" aria-hidden="true" /> {text}
      {status.state === "ended" ? (
        <button type="button" className="small" onClick={onRetry}>
          Reconnect
        </button>
      ) : null}
    </p>
  );
}

function MessageRow({ message }: { message: Message }) {
  if (message.role === "tool") {
    return (
      <li className="msg tool">
        <details>
          <summary>Tool result {message.toolCallId ? <code>{message.toolCallId}</code> : null}</summary>
          <pre>{pretty(message.content)}</pre>
        </details>
      </li>
    );
  }
  return (
    <li className={`msg ${message.role}`} id={message.role === "user" && message.turnId ? `turn-${message.turnId}` : undefined}>
      <span className="who">{message.role}</span>
      {message.content ? <div className="text">{message.content}</div> : null}
      {(message.toolCalls ?? []).map((call) => (
        <details key={call.id} className="toolcall">
          <summary>
            Tool call <code>{call.name}</code>
          </summary>
          <pre>{pretty(call.arguments)}</pre>
        </details>
      ))}
    </li>
  );
}

function pretty(value: unknown): string {
  if (typeof value === "string") {
    try {
      return JSON.stringify(JSON.parse(value), null, 2);
    } catch {
      return value;
    }
  }
  return JSON.stringify(value, null, 2);
}

/** The k-th tool step of a turn ran the k-th tool call its model answers asked for; the
 *  history holds each call's arguments and, under the call's id, its result. */
function toolDetails(steps: Step[], messages: Message[]): Map<number, { call: ToolCall; result?: string }> {
  const calls = messages.filter((m) => m.role === "assistant").flatMap((m) => m.toolCalls ?? []);
  const results = new Map(messages.filter((m) => m.role === "tool").map((m) => [m.toolCallId, m.content]));
  const found = new Map<number, { call: ToolCall; result?: string }>();
  steps
    .filter((s) => s.kind === "tool")
    .forEach((step, k) => {
      const call = calls[k];
      if (call && step.name === `call-${call.name}`) found.set(step.index, { call, result: results.get(call.id) });
    });
  return found;
}

/** A tool step's arguments and result: from the stream as the call starts and ends (bounded
 *  previews), then whole from the history once the turn has written its messages. */
function ToolIO({ step, fromHistory }: { step: Step; fromHistory?: { call: ToolCall; result?: string } }) {
  if (step.kind !== "tool") return null;
  const args = fromHistory ? fromHistory.call.arguments : step.arguments;
  const result = fromHistory?.result ?? step.result;
  if (args === undefined && result === undefined) return null;
  const cut = (n: number | undefined, whole: boolean) => (n && !whole ? ` (first part; ${n} characters in all)` : "");
  return (
    <div className="tool-io" aria-label={`Tool call ${step.tool ?? step.name.replace(/^call-/, "")}`}>
      <p className="muted">arguments{cut(step.argumentsTruncated, !!fromHistory)}</p>
      <pre data-testid="tool-arguments">{args === undefined || args === "" ? "{}" : pretty(args)}</pre>
      <details open={step.state !== "started"}>
        <summary>result{cut(step.resultTruncated, fromHistory?.result !== undefined)}</summary>
        <pre data-testid="tool-result">{result === undefined ? (step.state === "started" ? "(running…)" : "(none)") : pretty(result)}</pre>
      </details>
    </div>
  );
}

function TurnPanel({
  turnId,
  turn,
  messages,
  base,
  dispatch,
}: {
  turnId: string;
  turn: Turn | undefined;
  messages: Message[];
  base: string;
  dispatch: (a: Action) => void;
}) {
  const { gateway } = useConnection();
  const [error, setError] = useState<Error | null>(null);
  if (!turn) {
    // A past turn: its steps on demand (GET .../turns/{id}).
    return (
      <li className="turn past">
        <button
          type="button"
          className="small"
          onClick={async () => {
            if (!gateway) return;
            try {
              dispatch({ type: "turn", view: await request<TurnView>(gateway, "GET", `${base}/turns/${turnId}`) });
            } catch (e) {
              setError(e as Error);
            }
          }}
        >
          Show steps
        </button>
        <ErrorBox error={error} />
      </li>
    );
  }
  const steps = Object.values(turn.steps).sort((a, b) => a.index - b.index);
  const tools = toolDetails(steps, messages);
  return (
    <li className={`turn state-${turn.state}`} aria-label={`Turn ${turnId.slice(0, 8)}`}>
      <p className="turn-head">
        Turn <span className={`badge turn-${turn.state}`} data-testid="turn-state">{turn.state}</span>
        {turn.source && turn.source !== "api" ? <span className="muted"> from {turn.source}</span> : null}
        {turn.provider ? <span className="muted"> · {turn.provider}</span> : null}
      </p>
      <ol className="steps" aria-label="Steps">
        {steps.map((s) => (
          <li key={s.index} className={`step ${s.state}${s.isError ? " is-error" : ""}`} data-step={s.name} data-state={s.state}>
            <span className="step-name">{s.name}</span>
            <span className="step-state">{s.state === "started" ? "running…" : s.state === "completed" ? "done" : s.state}</span>
            <span className="muted">{duration(s)}</span>
            {s.provider ? <span className="muted">{s.provider}</span> : null}
            {s.toolCalls?.length ? <span className="muted">calls {s.toolCalls.join(", ")}</span> : null}
            {s.documents?.length ? (
              <span className="muted">
                documents {s.documents.map((d) => d.name ?? d.document ?? JSON.stringify(d)).join(", ")}
              </span>
            ) : null}
            {s.error ? <span className="error-inline">{s.error}</span> : null}
            <ToolIO step={s} fromHistory={tools.get(s.index)} />
          </li>
        ))}
      </ol>
      {turn.notices.map((n) => (
        <p key={n} className="warn">
          {n}
        </p>
      ))}
      {turn.text && OPEN.has(turn.state) ? (
        <div className="msg assistant streaming" aria-label="Answer so far">
          <span className="who">assistant (streaming)</span>
          <div className="text">{turn.text}</div>
        </div>
      ) : null}
      {turn.error ? <p className="error-inline">{turn.error}</p> : null}
    </li>
  );
}

function Composer({ base, openTurns }: { base: string; openTurns: number }) {
  const { gateway } = useConnection();
  const [content, setContent] = useState("");
  const [strategy, setStrategy] = useState("enqueue");
  const [error, setError] = useState<Error | null>(null);
  const [busy, setBusy] = useState(false);

  async function send(event?: FormEvent) {
    event?.preventDefault();
    if (!gateway || !content.trim()) return;
    setBusy(true);
    setError(null);
    try {
      // The key makes a retried POST (a flaky network) the same turn, not a second one.
      await request(gateway, "POST", `${base}/message`, {
        body: { content, multitask_strategy: strategy },
        headers: { "Idempotency-Key": crypto.randomUUID() },
      });
      setContent("");
    } catch (e) {
      setError(e as Error);
    } finally {
      setBusy(false);
    }
  }

  async function cancel() {
    if (!gateway) return;
    try {
      await request(gateway, "POST", `${base}/cancel`);
    } catch (e) {
      setError(e as Error);
    }
  }

  function onKey(event: KeyboardEvent<HTMLTextAreaElement>) {
    // Enter sends; Shift+Enter starts a new line.
    if (event.key === "Enter" && !event.shiftKey && !event.nativeEvent.isComposing) {
      event.preventDefault();
      void send();
    }
  }

  return (
    <form className="composer" onSubmit={send} aria-label="Send a message">
      <label htmlFor="message">Message</label>
      <textarea id="message" rows={3} value={content} onChange={(e) => setContent(e.target.value)} onKeyDown={onKey} aria-describedby="message-help" />
      <p id="message-help" className="muted">
        Enter sends, Shift+Enter adds a line.
      </p>
      <div className="row">
        <label htmlFor="strategy">If a turn is running</label>
        <select id="strategy" value={strategy} onChange={(e) => setStrategy(e.target.value)}>
          <option value="enqueue">enqueue (run after it)</option>
          <option value="interrupt">interrupt (cancel it)</option>
          <option value="reject">reject</option>
        </select>
        <button type="submit" disabled={busy || !content.trim()}>
          Send
        </button>
        {openTurns > 0 ? (
          <button type="button" className="danger" onClick={cancel}>
            Cancel turn
          </button>
        ) : null}
      </div>
      <ErrorBox error={error} />
    </form>
  );
}
