// Types of `tidemark/devtools`.
import type { Replica, Status } from './index.js';

/** `<tidemark-devtools>`: sync points, pending rows, op log, live queries, progress, quarantined ops and conflicts of `db`. */
export declare class TidemarkDevtools extends HTMLElement {
  /** The replica shown, or null. */
  db: Replica<any> | null;
  /** Names for db ids, shown instead of "replica 3f2a9c". */
  peerNames: { [dbId: string]: string } | Map<string, string> | null;
  /** Re-reads the replica and redraws (it also does so on the replica's events). */
  refresh(): void;
}

/** "server", "this replica", a given name, or "replica <short id>". */
export declare function peerName(id: string, status: Status, names?: { [dbId: string]: string } | Map<string, string> | null): string;
/** The first six characters of a db id. */
export declare function shortId(id: string | undefined | null): string;

declare global {
  interface HTMLElementTagNameMap {
    'tidemark-devtools': TidemarkDevtools;
  }
}
