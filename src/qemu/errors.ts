/**
 * QEMU-specific errors. All extend the classes of src/errors.ts so the CLI
 * maps them to stable codes.
 */
import { BackupError, QmpError } from '../errors.js';

/** An `{"error": {"class", "desc"}}` reply, or a QMP transport failure. */
export class QmpCommandError extends QmpError {
  override readonly code: string = 'QMP_COMMAND';
  /** QEMU's error class, e.g. GenericError, DeviceNotFound, CommandNotFound. */
  readonly errorClass: string;
  /** QEMU's own human-readable description. */
  readonly desc: string;
  readonly command: string;

  constructor(command: string, errorClass: string, desc: string, options?: { cause?: unknown }) {
    super(`QMP ${command} failed: ${errorClass}: ${desc}`, options);
    this.errorClass = errorClass;
    this.desc = desc;
    this.command = command;
  }
}

/** The QMP socket could not be reached, closed, or spoke something that is not QMP. */
export class QmpConnectionError extends QmpError {
  override readonly code: string = 'QMP_CONNECTION';
}

/** A command or an awaited event did not arrive in time. */
export class QmpTimeoutError extends QmpError {
  override readonly code: string = 'QMP_TIMEOUT';
}

/** The QEMU process lacks something pull-mode backup needs (version, driver, command). */
export class QemuUnsupportedError extends QmpError {
  override readonly code: string = 'QEMU_UNSUPPORTED';
}

/** Bad --drive input: unknown node, node without a usable shape, duplicate names. */
export class QemuDriveError extends QmpError {
  override readonly code: string = 'QEMU_DRIVE';
}

/** A pull-mode backup failed after setup (NBD read, archive sink, snapshot broken). */
export class QemuBackupError extends BackupError {
  override readonly code: string = 'QEMU_BACKUP';
}
