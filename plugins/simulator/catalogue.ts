/** Equipment the simulated sites are built from: plausible ratings of common residential kit. */

export interface PvModel {
  vendor: string
  model: string
  ratedPowerW: number
}

export interface BatteryModel {
  vendor: string
  model: string
  capacityWh: number
  ratedPowerW: number
}

export interface EvseModel {
  vendor: string
  model: string
  maxPowerW: number
  phases: 1 | 3
}

export interface MeterModel {
  vendor: string
  model: string
}

export const PV_MODELS: readonly PvModel[] = [
  { vendor: 'Fronius', model: 'Primo 5.0-1', ratedPowerW: 5_000 },
  { vendor: 'SMA', model: 'Sunny Boy 6.0', ratedPowerW: 6_000 },
  { vendor: 'Fronius', model: 'Primo 8.2-1', ratedPowerW: 8_200 },
  { vendor: 'SolarEdge', model: 'SE10K', ratedPowerW: 10_000 },
]

export const BATTERY_MODELS: readonly BatteryModel[] = [
  { vendor: 'Tesla', model: 'Powerwall 2', capacityWh: 13_500, ratedPowerW: 5_000 },
  { vendor: 'BYD', model: 'Battery-Box Premium HVS 10.2', capacityWh: 10_240, ratedPowerW: 5_000 },
  { vendor: 'LG Energy Solution', model: 'RESU10H Prime', capacityWh: 9_600, ratedPowerW: 5_000 },
  { vendor: 'sonnen', model: 'sonnenBatterie 10', capacityWh: 11_000, ratedPowerW: 4_600 },
]

export const EVSE_MODELS: readonly EvseModel[] = [
  { vendor: 'Wallbox', model: 'Pulsar Plus', maxPowerW: 7_400, phases: 1 },
  { vendor: 'myenergi', model: 'zappi 7kW', maxPowerW: 7_400, phases: 1 },
  { vendor: 'ABB', model: 'Terra AC W11', maxPowerW: 11_000, phases: 3 },
  { vendor: 'Zaptec', model: 'Go', maxPowerW: 22_000, phases: 3 },
  { vendor: 'Easee', model: 'Charge', maxPowerW: 22_000, phases: 3 },
]

export const METER_MODELS: readonly MeterModel[] = [
  { vendor: 'Landis+Gyr', model: 'E360' },
  { vendor: 'EDMI', model: 'Mk7A' },
  { vendor: 'Itron', model: 'SL7000' },
]

/** What the car's on-board charger accepts (W); the session charges at the lower of it and the EVSE. */
export const VEHICLE_MAX_POWER_W: readonly number[] = [3_700, 7_400, 7_400, 11_000, 11_000, 22_000]
