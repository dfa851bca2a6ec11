import type { ByteSink } from '../format/sink.js';
import type { StoreError } from '../errors.js';
import { openArchiveTarget, type ArchiveDestination, type ArchiveTargetContext, type ArchiveTargetSpec, type S3TargetStore } from '../backup/target.js';
import type { BackupTarget } from './backup-request.js';
import { HttpStreamSink } from './stream-sink.js';

/** The S3 store the agent uses for the `s3` target (configured bucket or the embedded s3rver). */
export interface AgentStore extends S3TargetStore {
  endpoint?: string;
  embedded: boolean;
}

/** Where the agent writes a backup's archive (src/backup/target.ts), plus the stream of the `-` target. */
export interface OpenedTarget extends ArchiveDestination {
  /** Set for the `-` target: the control API attaches the HTTP reader to it. */
  stream?: HttpStreamSink;
}

export interface TargetContext extends ArchiveTargetContext {
  store: AgentStore | null;
  onWarning: (w: StoreError) => void;
  /** Test seam (StartAgentOptions.wrapSink). */
  wrapSink?: (sink: ByteSink, target: string) => ByteSink;
}

/** Opens the ByteSink for a backup target of a request (POST /backups). */
export async function openTarget(target: BackupTarget, ctx: TargetContext): Promise<OpenedTarget> {
  const stream = target.kind === 'stream' ? new HttpStreamSink() : undefined;
  let spec: ArchiveTargetSpec;
  if (stream) spec = { kind: 'sink', sink: stream, description: '-' };
  else if (target.kind === 'file') spec = { kind: 'file', path: target.path };
  else if (ctx.store) spec = { kind: 's3', store: ctx.store };
  else throw new Error('no S3 store configured');
  const t = await openArchiveTarget(spec, ctx, { onWarning: ctx.onWarning, ...(ctx.wrapSink ? { wrapSink: ctx.wrapSink } : {}) });
  return stream ? { ...t, stream } : t;
}
