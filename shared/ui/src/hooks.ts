import { useCallback, useEffect, useState } from "react";
import type { SavedGateway } from "./gateways";
import { useConnection } from "./connection";

export interface Loaded<T> {
  data: T | undefined;
  error: Error | null;
  loading: boolean;
  reload: () => void;
}

/** Load something from the current gateway; reloads when `key` changes, aborts on unmount. */
export function useLoad<T>(key: string, load: (gateway: SavedGateway, signal: AbortSignal) => Promise<T>): Loaded<T> {
  const { gateway } = useConnection();
  const [data, setData] = useState<T | undefined>(undefined);
  const [error, setError] = useState<Error | null>(null);
  const [loading, setLoading] = useState(true);
  const [generation, setGeneration] = useState(0);
  useEffect(() => {
    if (!gateway) return;
    const abort = new AbortController();
    setLoading(true);
    load(gateway, abort.signal)
      .then((value) => {
        setData(value);
        setError(null);
      })
      .catch((e: Error) => {
        if (e.name !== "AbortError") setError(e);
      })
      .finally(() => {
        if (!abort.signal.aborted) setLoading(false);
      });
    return () => abort.abort();
    // `load` is a fresh closure each render; `key` names what it loads.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [gateway, key, generation]);
  const reload = useCallback(() => setGeneration((g) => g + 1), []);
  return { data, error, loading, reload };
}
