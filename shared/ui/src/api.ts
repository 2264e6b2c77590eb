// The gateway's public API, called with the saved token in the Authorization header.

import type { SavedGateway } from "./gateways";

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly details: { path: string; message: string }[] = [],
  ) {
    super(message);
  }
}

export interface Whoami {
  tokenId: string;
  name: string;
  role: "read" | "write" | "admin";
  namespaces: string[];
  tools: string[] | null;
}

export function canWrite(who: Whoami | null): boolean {
  return who?.role === "write" || who?.role === "admin";
}

export async function request<T>(
  gateway: Pick<SavedGateway, "url" | "token">,
  method: string,
  path: string,
  options: { body?: unknown; yaml?: string; signal?: AbortSignal; headers?: Record<string, string> } = {},
): Promise<T> {
  const headers: Record<string, string> = {
    Authorization: `Bearer ${gateway.token}`,
    Accept: "application/json",
    ...options.headers,
  };
  let body: string | undefined;
  if (options.yaml !== undefined) {
    headers["Content-Type"] = "application/yaml";
    body = options.yaml;
  } else if (options.body !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(options.body);
  }
  let response: Response;
  try {
    response = await fetch(gateway.url + path, {
      method,
      headers,
      body,
      signal: options.signal,
      cache: "no-store",
    });
  } catch (error) {
    if ((error as Error).name === "AbortError") throw error;
    throw new ApiError(0, "unreachable", `cannot reach ${gateway.url}: ${(error as Error).message}`);
  }
  const text = await response.text();
  let payload: unknown = null;
  try {
    payload = text ? JSON.parse(text) : null;
  } catch {
    payload = null;
  }
  if (!response.ok) {
    const error = (payload as { error?: { code?: string; message?: string; details?: [] } } | null)?.error;
    throw new ApiError(
      response.status,
      error?.code ?? "http_error",
      error?.message ?? `${method} ${path}: HTTP ${response.status}`,
      error?.details ?? [],
    );
  }
  return payload as T;
}

/** Namespaced API path for a kind: /v1/ns/{ns}/{kind}[/{name}]. */
export function nsPath(ns: string, ...parts: string[]): string {
  return ["/v1/ns", ns, ...parts].map((p, i) => (i === 0 ? p : encodeURIComponent(p))).join("/");
}

export interface Metadata {
  name: string;
  namespace?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  uid?: string;
  resourceVersion?: string;
  generation?: number;
  creationTimestamp?: string;
  updateTimestamp?: string;
}

export interface Resource {
  apiVersion: string;
  kind: string;
  metadata: Metadata;
  spec?: Record<string, any>;
  definition?: Record<string, any>;
  status?: Record<string, any>;
}

export interface List<T> {
  items: T[];
  nextPageToken?: string | null;
}

/** Every page of a list (the UI shows whole namespaces; the API pages by 500 at most). */
export async function listAll<T>(
  gateway: Pick<SavedGateway, "url" | "token">,
  path: string,
  signal?: AbortSignal,
): Promise<T[]> {
  const items: T[] = [];
  let pageToken: string | null | undefined = undefined;
  for (let page = 0; page < 20; page++) {
    const query: string = `?limit=500${pageToken ? `&pageToken=${encodeURIComponent(pageToken)}` : ""}`;
    const list: List<T> = await request<List<T>>(gateway, "GET", path + query, { signal });
    items.push(...list.items);
    pageToken = list.nextPageToken;
    if (!pageToken) break;
  }
  return items;
}
