import { useEffect, useReducer, useRef, useState, type FormEvent, type KeyboardEvent } from "react";
import { Link, useLocation, useParams } from "react-router";
import { ApiError, canWrite, nsPath, request } from "../api";
import { ErrorBox, Fields, Loading, Section, Time } from "../components";
import { useConnection } from "../connection";
import { uiPath } from "../kinds";
import { follow, type StreamStatus } from "../sse";
import { duration, OPEN, reduce, type Action, type Message, type SessionView, type Step, type ToolCall, type Turn, type TurnView } from "../sessionState";
import { sessionPath } from "./Agent";

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
