# Shared by the provisioning scripts (dot-sourced): folders, the host share, logging, the env file.
# Windows PowerShell 5.1 (what Windows ships); no module outside Windows is needed.

Set-StrictMode -Version 2.0
$ErrorActionPreference = 'Stop'

$BridgeRoot = 'C:\bridge'
$Share = '\\host.lan\Data'               # the container's /data, served to the VM by dockur (Samba)
$ShareApp = Join-Path $Share 'app'           # the project, read-only
$ShareConfig = Join-Path $Share 'config'     # bridge.env and terminals.yaml
$ShareInstallers = Join-Path $Share 'installers'
$ShareLogs = Join-Path $Share 'logs'
$BinDir = Join-Path $BridgeRoot 'bin'
$AppDir = Join-Path $BridgeRoot 'app'
$StateDir = Join-Path $BridgeRoot 'state'
$LocalLogs = Join-Path $BridgeRoot 'logs'
$PythonDir = Join-Path $BridgeRoot 'python'
$VenvPython = Join-Path $BridgeRoot 'venv\Scripts\python.exe'
$PlanFile = Join-Path $StateDir 'plan.json'
$StopFile = Join-Path $StateDir 'stop'
$PythonVersion = '3.11.9'

function Write-BridgeLog {
    param([Parameter(Mandatory = $true)][string]$Message, [string]$File = (Join-Path $LocalLogs 'provision.log'))
    $line = '{0} [{1}] {2}' -f (Get-Date -Format 'yyyy-MM-dd HH:mm:ss'), $env:COMPUTERNAME, $Message
    Write-Host $line
    try { Add-Content -Path $File -Value $line -Encoding UTF8 } catch { Write-Host "log write failed: $_" }
}

function Initialize-BridgeFolders {
    foreach ($dir in @($BridgeRoot, $BinDir, $AppDir, $StateDir, $LocalLogs)) {
        if (-not (Test-Path $dir)) { New-Item -ItemType Directory -Path $dir -Force | Out-Null }
    }
}

function Wait-Share {
    param([int]$Seconds = 300)
    $deadline = (Get-Date).AddSeconds($Seconds)
    while (-not (Test-Path (Join-Path $ShareApp 'manage.py'))) {
        if ((Get-Date) -gt $deadline) { throw "the host share $Share is not reachable after $Seconds s" }
        Start-Sleep -Seconds 5
    }
}

function Get-LogDir {
    # Logs go to the host's share (the host reads them in its logs folder); local when it is away.
    $dir = Join-Path $ShareLogs $env:COMPUTERNAME
    try {
        if (-not (Test-Path $dir)) { New-Item -ItemType Directory -Path $dir -Force | Out-Null }
        $probe = Join-Path $dir '.write-test'
        Set-Content -Path $probe -Value 'ok'
        Remove-Item $probe -Force
        return $dir
    } catch {
        return $LocalLogs
    }
}

function Import-BridgeEnv {
    # KEY=VALUE lines ('#' comments) from the host's bridge.env into this process's environment,
    # which every process started from here inherits (DATABASE_URL, REDIS_URL, keys, ...).
    param([Parameter(Mandatory = $true)][string]$Path)
    if (-not (Test-Path $Path)) { throw "missing $Path (copy bridge.env.example and fill it in)" }
    foreach ($raw in Get-Content -Path $Path -Encoding UTF8) {
        $line = $raw.Trim()
        if ($line -eq '' -or $line.StartsWith('#')) { continue }
        $eq = $line.IndexOf('=')
        if ($eq -lt 1) { throw "bad line in ${Path}: $line" }
        $name = $line.Substring(0, $eq).Trim()
        $value = $line.Substring($eq + 1).Trim().Trim('"')
        [Environment]::SetEnvironmentVariable($name, $value, 'Process')
    }
    foreach ($required in @('DATABASE_URL', 'REDIS_URL', 'BRIDGE_CREDENTIALS_KEY', 'SECRET_KEY')) {
        if (-not [Environment]::GetEnvironmentVariable($required, 'Process')) { throw "$required is not set in $Path" }
    }
}

function Test-ProcessAlive {
    param([string]$PidFile)
    if (-not (Test-Path $PidFile)) { return $false }
    $id = (Get-Content -Path $PidFile -TotalCount 1).Trim()
    if (-not $id) { return $false }
    return $null -ne (Get-Process -Id ([int]$id) -ErrorAction SilentlyContinue)
}
