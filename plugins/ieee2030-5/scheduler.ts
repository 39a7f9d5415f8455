/**
 * Control scheduling (IEEE 2030.5 §12.1.3 event rules, CSIP-AUS): which DERControl is in force
 * for each mode at a given server time, and which responses each event is owed. Pure: no I/O, no
 * timers; time is server time in epoch seconds, so the schedule follows the utility's clock.
 *
 * - An event's effective window is its interval shifted by a random start offset in
 *   [0, randomizeStart] (or [randomizeStart, 0]) and stretched by one in [0, randomizeDuration];
 *   the offsets are drawn once per event and kept (so a restart does not redraw them).
 *   Supersession is judged on the intervals as scheduled, so randomisation never makes two
 *   back-to-back events overlap.
 * - Overlapping events of one program: the newer (creationTime) supersedes the older.
 * - Between programs: lower `primacy` wins, per mode (an event of a better program that covers
 *   all that is left of a worse one supersedes it); a mode that no event in force sets falls back
 *   to the DefaultDERControl of the program with the best primacy that sets it.
 * - Responses: received when first seen, started / completed at the window's edges, cancelled
 *   when the server cancels the event (or withdraws it before its end), superseded as above,
 *   "expired" when first seen after its end.
 */
import {
  type DefaultDerControl,
  type DerControl,
  type DerControlBase,
  EVENT_STATUS,
  RESPONSE_STATUS,
} from './sep.ts'

export const MODES = [
  'opModExpLimW',
  'opModImpLimW',
  'opModGenLimW',
  'opModLoadLimW',
  'opModConnect',
  'opModEnergize',
] as const
export type Mode = (typeof MODES)[number]

export interface ProgramSnapshot {
  href: string
  primacy: number
  defaultControl?: DefaultDerControl
  controls: DerControl[]
}

/** What the schedule remembers of one event (persisted, so a restart neither repeats nor drops responses). */
export interface EventTrack {
  mrid: string
  program: string
  primacy: number
  creationTime: number
  /** Effective window (randomised), server epoch seconds. */
  start: number
  end: number
  /** The interval as scheduled, before randomisation: supersession is judged on it. */
  scheduledStart?: number
  scheduledEnd?: number
  replyTo?: string
  base: DerControlBase
  /** Responses already sent (statuses). */
  sent: number[]
  state: 'scheduled' | 'active' | 'completed' | 'cancelled' | 'superseded' | 'expired'
}

export interface ModeValue {
  value: number | boolean
  /** Server epoch seconds when it ends (events), absent for defaults. */
  until?: number
  source:
    | { type: 'event'; mrid: string; program: string }
    | { type: 'default'; program: string; mrid?: string }
}

export interface ResponseDue {
  mrid: string
  replyTo: string
  status: number
}

const FINAL = new Set<EventTrack['state']>(['completed', 'cancelled', 'superseded', 'expired'])

/** Deterministic offset in [0, range] (or [range, 0]) for an event: FNV-1a of the mRID and a seed. */
export function randomOffset(mrid: string, range: number, seed: number): number {
  if (range === 0) return 0
  let hash = 0x811c9dc5 ^ seed
  for (const char of mrid) {
    hash ^= char.charCodeAt(0)
    hash = Math.imul(hash, 0x01000193) >>> 0
  }
  // Avalanche (murmur3 fmix32): similar mRIDs get unrelated offsets.
  hash ^= hash >>> 16
  hash = Math.imul(hash, 0x85ebca6b) >>> 0
  hash ^= hash >>> 13
  hash = Math.imul(hash, 0xc2b2ae35) >>> 0
  hash ^= hash >>> 16
  const fraction = (hash >>> 0) / 0xffffffff
  return Math.round(fraction * range)
}

export class ControlSchedule {
  /** Events by mRID. */
  readonly events = new Map<string, EventTrack>()
  private programs: ProgramSnapshot[] = []

  constructor(private readonly seed = 0) {}

  /** Restore what a previous run persisted. */
  restore(tracks: readonly EventTrack[], programs: readonly ProgramSnapshot[]): void {
    for (const track of tracks) this.events.set(track.mrid, { ...track, sent: [...track.sent] })
    this.programs = [...programs]
  }

  snapshot(): { events: EventTrack[]; programs: ProgramSnapshot[] } {
    return { events: [...this.events.values()], programs: this.programs }
  }

  /**
   * Take a fresh view of the programs (after a poll or a notification). Returns the responses
   * it makes due: received, cancelled, superseded, expired.
   */
  update(programs: readonly ProgramSnapshot[], now: number): ResponseDue[] {
    this.programs = [...programs]
    const due: ResponseDue[] = []
    const seen = new Set<string>()
    for (const program of programs) {
      for (const control of program.controls) {
        seen.add(control.mrid)
        let track = this.events.get(control.mrid)
        if (!track) {
          const startOffset = randomOffset(control.mrid, control.randomizeStart, this.seed)
          const durationOffset = randomOffset(`${control.mrid}/d`, control.randomizeDuration, this.seed)
          const start = control.start + startOffset
          track = {
            mrid: control.mrid,
            program: program.href,
            primacy: program.primacy,
            creationTime: control.creationTime,
            start,
            end: start + control.duration + durationOffset,
            scheduledStart: control.start,
            scheduledEnd: control.start + control.duration,
            ...(control.replyTo ? { replyTo: control.replyTo } : {}),
            base: control.base,
            sent: [],
            state: 'scheduled',
          }
          this.events.set(control.mrid, track)
          this.respond(track, RESPONSE_STATUS.received, due)
          if (track.end <= now && control.currentStatus < EVENT_STATUS.cancelled) {
            track.state = 'expired'
            this.respond(track, RESPONSE_STATUS.expired, due)
          }
        }
        track.primacy = program.primacy
        if (FINAL.has(track.state)) continue
        if (
          control.currentStatus === EVENT_STATUS.cancelled ||
          control.currentStatus === EVENT_STATUS.cancelledWithRandomization
        ) {
          track.state = 'cancelled'
          this.respond(track, RESPONSE_STATUS.cancelled, due)
        } else if (control.currentStatus === EVENT_STATUS.superseded) {
          track.state = 'superseded'
          this.respond(track, RESPONSE_STATUS.superseded, due)
        }
      }
    }
    // Withdrawn before it ended: the server no longer wants it.
    for (const track of this.events.values()) {
      if (seen.has(track.mrid) || FINAL.has(track.state)) continue
      if (track.end > now) {
        track.state = 'cancelled'
        this.respond(track, RESPONSE_STATUS.cancelled, due)
      }
    }
    this.supersede(due, now)
    return due
  }

  /** Advance to `now`: starts and completions due, and the value in force per mode. */
  tick(now: number): { responses: ResponseDue[]; modes: Map<Mode, ModeValue> } {
    const due: ResponseDue[] = []
    for (const track of this.events.values()) {
      if (FINAL.has(track.state)) continue
      if (track.end <= now) {
        if (track.state === 'active') {
          track.state = 'completed'
          this.respond(track, RESPONSE_STATUS.completed, due)
        } else {
          track.state = 'expired'
          this.respond(track, RESPONSE_STATUS.expired, due)
        }
      } else if (track.start <= now && track.state === 'scheduled') {
        track.state = 'active'
        this.respond(track, RESPONSE_STATUS.started, due)
      }
    }
    return { responses: due, modes: this.inForce(now) }
  }

  /** The next server time (s) at which tick() would change something, if any. */
  nextChange(now: number): number | undefined {
    let next: number | undefined
    for (const track of this.events.values()) {
      if (FINAL.has(track.state)) continue
      for (const edge of [track.start, track.end])
        if (edge > now && (next === undefined || edge < next)) next = edge
    }
    return next
  }

  /** Forget finished events older than `before` (server s), keeping state small. */
  prune(before: number): void {
    for (const [mrid, track] of this.events)
      if (FINAL.has(track.state) && track.end < before) this.events.delete(mrid)
  }

  private inForce(now: number): Map<Mode, ModeValue> {
    const modes = new Map<Mode, ModeValue>()
    const active = [...this.events.values()]
      .filter((track) => track.state === 'active' && track.start <= now && now < track.end)
      .sort((a, b) => a.primacy - b.primacy || b.creationTime - a.creationTime)
    for (const mode of MODES) {
      const event = active.find((track) => track.base[mode] !== undefined)
      if (event) {
        modes.set(mode, {
          value: event.base[mode]!,
          until: event.end,
          source: { type: 'event', mrid: event.mrid, program: event.program },
        })
        continue
      }
      const program = [...this.programs]
        .sort((a, b) => a.primacy - b.primacy)
        .find((candidate) => candidate.defaultControl?.base[mode] !== undefined)
      if (program?.defaultControl) {
        modes.set(mode, {
          value: program.defaultControl.base[mode]!,
          source: {
            type: 'default',
            program: program.href,
            ...(program.defaultControl.mrid ? { mrid: program.defaultControl.mrid } : {}),
          },
        })
      }
    }
    return modes
  }

  /**
   * Within a program, a newer event that overlaps an older unfinished one supersedes it. Across
   * programs, an event of a better primacy supersedes one of a worse primacy when it covers all
   * that is left of it (the worse one could never be in force again); a partial overlap only
   * suspends the worse one while the better one runs.
   */
  private supersede(due: ResponseDue[], now: number): void {
    const live = [...this.events.values()].filter((track) => !FINAL.has(track.state))
    const from = (track: EventTrack) => track.scheduledStart ?? track.start
    const to = (track: EventTrack) => track.scheduledEnd ?? track.end
    for (const older of live) {
      const newer = live.find(
        (other) =>
          other !== older &&
          !FINAL.has(other.state) &&
          ((other.program === older.program &&
            other.creationTime > older.creationTime &&
            from(other) < to(older) &&
            from(older) < to(other)) ||
            (other.program !== older.program &&
              other.primacy < older.primacy &&
              from(other) <= Math.max(from(older), now) &&
              to(other) > to(older))),
      )
      if (newer) {
        older.state = 'superseded'
        this.respond(older, RESPONSE_STATUS.superseded, due)
      }
    }
  }

  private respond(track: EventTrack, status: number, due: ResponseDue[]): void {
    if (track.sent.includes(status)) return
    track.sent.push(status)
    if (track.replyTo) due.push({ mrid: track.mrid, replyTo: track.replyTo, status })
  }
}
