// A session page's state: its messages and its turns as the stream and the API describe them.
// Pure (no React): the reducer folds stream events and turn views into it.
import type { StreamEvent } from "./sse";

export interface ToolCall {
  id: string;
  name: string;
  arguments: unknown;
}
export interface Message {
  seq: number;
  role: string;
  content: string;
  toolCalls?: ToolCall[];
  toolCallId?: string;
  turnId: string | null;
  createdAt?: string;
}
export interface Step {
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
export interface Turn {
  id: string;
  state: string;
  steps: Record<number, Step>;
  text: string; // the answer as it streams (message.delta)
  provider?: string | null;
  error?: string;
  source?: string;
  notices: string[];
}
export interface TurnView {
  id: string;
  state: string;
  source: string;
  provider: string | null;
  error: { message?: string } | null;
  // Tool steps carry their call's preview (tool, callId, arguments, result), as the events do.
  steps?: (Omit<Step, "startedAt" | "completedAt"> & { startedAt: string | null; completedAt: string | null })[];
}
export interface SessionView {
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

export interface State {
  messages: Record<number, Message>;
  turns: Record<string, Turn>;
}
export type Action = { type: "messages"; items: Message[] } | { type: "event"; event: StreamEvent } | { type: "turn"; view: TurnView };

export const OPEN = new Set(["queued", "running"]);

function emptyTurn(id: string): Turn {
  return { id, state: "queued", steps: {}, text: "", notices: [] };
}

export function reduce(state: State, action: Action): State {
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

export function duration(step: Step): string {
  const start = millis(step.startedAt);
  const end = millis(step.completedAt);
  if (start === null || end === null) return "";
  const ms = Math.max(0, end - start);
  // Event times are commit times: a step that starts and ends in one transaction (the
  // knowledge lookup, the final write) shows none rather than a made-up 0 ms.
  if (ms === 0) return "";
  return ms < 1000 ? `${ms} ms` : `${(ms / 1000).toFixed(2)} s`;
}
