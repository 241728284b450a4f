# Every boot (scheduled task at logon) and every 5 minutes with -Ensure: bring the VM's part of the
# bridge up from what the host shares. Idempotent: a second run only starts what is not running.
#
#  1. copy the project from \\host.lan\Data\app and install the worker requirements (when changed)
#  2. read bridge.env (DATABASE_URL, REDIS_URL on the host, keys) and terminals.yaml (backend mt5)
#  3. make each terminal's portable copy from its broker installer (once)
#  4. render the plan (deploy/windows/plan.py: the same argvs as Linux, workers/stack.py) and start
#     one supervisor per process: the terminal, and its one bridge process (the pinned order worker,
#     with its reader and poller as threads: run_terminal_worker)
param([switch]$Ensure)

. (Join-Path $PSScriptRoot 'common.ps1')
Initialize-BridgeFolders
Wait-Share
$logDir = Get-LogDir
$provisionLog = Join-Path $logDir 'provision.log'

function Sync-Project {
    # /MIR keeps C:\bridge\app identical to the host's project; robocopy exit codes below 8 are success.
    & robocopy.exe $ShareApp $AppDir /MIR /NFL /NDL /NJH /NJS /NP /R:2 /W:2 `
        /XD .git .venv venv var node_modules __pycache__ .ruff_cache .pytest_cache | Out-Null
    if ($LASTEXITCODE -ge 8) { throw "robocopy of the project failed ($LASTEXITCODE)" }
    foreach ($script in @('common.ps1', 'every-boot.ps1', 'supervise.ps1', 'stop.ps1')) {
        Copy-Item -Path (Join-Path $AppDir "deploy\windows\oem\$script") -Destination (Join-Path $BinDir $script) -Force
    }
}

function Install-Requirements {
    $requirements = Join-Path $AppDir 'deploy\windows\requirements-worker.txt'
    $stamp = Join-Path $StateDir 'requirements.sha256'
    $hash = (Get-FileHash -Path $requirements -Algorithm SHA256).Hash
    if ((Test-Path $VenvPython) -and (Test-Path $stamp) -and ((Get-Content $stamp -TotalCount 1) -eq $hash)) { return }
    if (-not (Test-Path $VenvPython)) {
        Write-BridgeLog 'creating the virtualenv' $provisionLog
        & (Join-Path $PythonDir 'python.exe') -m venv (Join-Path $BridgeRoot 'venv')
        if ($LASTEXITCODE -ne 0) { throw 'venv creation failed' }
    }
    Write-BridgeLog 'installing the worker requirements' $provisionLog
    & $VenvPython -m pip install --disable-pip-version-check -q -r $requirements
    if ($LASTEXITCODE -ne 0) { throw 'pip install of requirements-worker.txt failed' }
    Set-Content -Path $stamp -Value $hash
}

function Find-TerminalInstalls {
    $roots = @($env:ProgramFiles, ${env:ProgramFiles(x86)}) | Where-Object { $_ -and (Test-Path $_) }
    foreach ($root in $roots) {
        Get-ChildItem -Path $root -Directory -ErrorAction SilentlyContinue | ForEach-Object {
            $exe = Join-Path $_.FullName 'terminal64.exe'
            if (Test-Path $exe) { $_.FullName }
        }
    }
}

function Install-Terminal {
    # A terminal's own portable copy: run the broker installer once (silent, /auto), then copy the
    # installed folder to the terminal's folder. Each copy runs with /portable: its data stays there.
    param($Terminal)
    if (Test-Path $Terminal.path) { return }
    $installerName = $Terminal.installer
    if (-not $installerName) {
        $found = @(Get-ChildItem -Path $ShareInstallers -Filter '*.exe' | Where-Object { $_.Name -notlike 'python-*' })
        if ($found.Count -ne 1) { throw "terminal $($Terminal.name): name its installer (several or none in $ShareInstallers)" }
        $installerName = $found[0].Name
    }
    $baseFile = Join-Path $StateDir ("base-" + [IO.Path]::GetFileNameWithoutExtension($installerName) + '.txt')
    $base = if (Test-Path $baseFile) { (Get-Content $baseFile -TotalCount 1).Trim() } else { '' }
    if (-not $base -or -not (Test-Path (Join-Path $base 'terminal64.exe'))) {
        $before = @(Find-TerminalInstalls)
        $installer = Join-Path $ShareInstallers $installerName
        if (-not (Test-Path $installer)) { throw "terminal $($Terminal.name): installer $installer not found" }
        Write-BridgeLog "running $installerName /auto" $provisionLog
        $proc = Start-Process -FilePath $installer -ArgumentList '/auto' -Wait -PassThru
        Start-Sleep -Seconds 5
        # The installer starts the fresh terminal: stop it, the copy is made from a closed install.
        Get-Process -Name 'terminal64' -ErrorAction SilentlyContinue | Stop-Process -Force
        $new = @(Find-TerminalInstalls | Where-Object { $before -notcontains $_ })
        if ($new.Count -lt 1) { throw "$installerName (exit $($proc.ExitCode)) installed no terminal64.exe" }
        $base = $new[0]
        Set-Content -Path $baseFile -Value $base
    }
    Write-BridgeLog "terminal $($Terminal.name): portable copy of $base in $($Terminal.installDir)" $provisionLog
    & robocopy.exe $base $Terminal.installDir /E /NFL /NDL /NJH /NJS /NP | Out-Null
    if ($LASTEXITCODE -ge 8) { throw "copying $base failed ($LASTEXITCODE)" }
}

function Start-Supervisor {
    param($Process)
    $pidFile = Join-Path $StateDir "$($Process.id).supervisor.pid"
    if (Test-ProcessAlive $pidFile) { return }
    $supervise = Join-Path $BinDir 'supervise.ps1'
    $arguments = "-NoProfile -ExecutionPolicy Bypass -WindowStyle Hidden -File `"$supervise`" -PlanFile `"$PlanFile`" -Id $($Process.id)"
    $proc = Start-Process -FilePath 'powershell.exe' -ArgumentList $arguments -WindowStyle Hidden -PassThru
    Set-Content -Path $pidFile -Value $proc.Id
    Write-BridgeLog "started supervisor of $($Process.id) (pid $($proc.Id))" $provisionLog
}

try {
    if (-not $Ensure) {
        Write-BridgeLog 'every-boot: syncing the project' $provisionLog
        Sync-Project
        Install-Requirements
        if (Test-Path $StopFile) { Remove-Item $StopFile -Force }
    } elseif (Test-Path $StopFile) {
        return  # stopped on purpose (stop.ps1): -Ensure brings nothing back
    }
    Import-BridgeEnv -Path (Join-Path $ShareConfig 'bridge.env')
    $terminalsFile = Join-Path $BridgeRoot 'terminals.yaml'
    Copy-Item -Path (Join-Path $ShareConfig 'terminals.yaml') -Destination $terminalsFile -Force
    $env:BRIDGE_TERMINALS_FILE = $terminalsFile
    $env:PYTHONUNBUFFERED = '1'
    $only = [Environment]::GetEnvironmentVariable('BRIDGE_VM_TERMINALS', 'Process')
    if (-not $only) { $only = '' }

    Push-Location $AppDir
    try {
        $json = & $VenvPython -m deploy.windows.plan --terminals $terminalsFile --python $VenvPython `
            --root $BridgeRoot --logs $logDir --only $only
        if ($LASTEXITCODE -ne 0) { throw 'rendering the plan failed' }
    } finally { Pop-Location }
    Set-Content -Path $PlanFile -Value ($json -join "`n") -Encoding UTF8
    $plan = Get-Content -Path $PlanFile -Raw | ConvertFrom-Json

    foreach ($terminal in $plan.terminals) { Install-Terminal $terminal }
    foreach ($process in $plan.processes) { Start-Supervisor $process }
    Write-BridgeLog ("every-boot done: {0} terminal(s), {1} process(es)" -f @($plan.terminals).Count, @($plan.processes).Count) $provisionLog
} catch {
    Write-BridgeLog "every-boot FAILED: $_" $provisionLog
    throw
}
